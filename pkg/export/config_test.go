package export

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func validConfig() Config {
	return Config{Endpoint: "https://s3.example.com:9000", Bucket: "backups", AccessKeyID: "AK", SecretAccessKey: "SK"}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		ok     bool
	}{
		{"valid", func(*Config) {}, true},
		{"http endpoint", func(c *Config) { c.Endpoint = "http://127.0.0.1:8333" }, true},
		{"prefix", func(c *Config) { c.Prefix = "cluster-a/exports/" }, true},
		{"endpoint without scheme", func(c *Config) { c.Endpoint = "s3.example.com" }, false},
		{"endpoint with path", func(c *Config) { c.Endpoint = "https://s3.example.com/other-bucket" }, false},
		{"endpoint with user", func(c *Config) { c.Endpoint = "https://u:p@s3.example.com" }, false},
		{"ftp endpoint", func(c *Config) { c.Endpoint = "ftp://s3.example.com" }, false},
		{"bucket upper case", func(c *Config) { c.Bucket = "Backups" }, false},
		{"bucket with slash", func(c *Config) { c.Bucket = "backups/x" }, false},
		{"bucket empty", func(c *Config) { c.Bucket = "" }, false},
		{"no access key", func(c *Config) { c.AccessKeyID = "" }, false},
		{"no secret key", func(c *Config) { c.SecretAccessKey = "" }, false},
		{"prefix without slash", func(c *Config) { c.Prefix = "exports" }, false},
		{"prefix absolute", func(c *Config) { c.Prefix = "/exports/" }, false},
		{"prefix dot dot", func(c *Config) { c.Prefix = "a/../" }, false},
		{"prefix dot", func(c *Config) { c.Prefix = "./" }, false},
		{"prefix double slash", func(c *Config) { c.Prefix = "a//" }, false},
		{"CA bundle not PEM", func(c *Config) { c.CABundle = []byte("not a certificate") }, false},
		{"part size too small", func(c *Config) { c.PartSize = 1 << 20 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.modify(&c)
			err := c.Validate()
			if tt.ok && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
			if _, err2 := New(c); (err2 == nil) != tt.ok {
				t.Fatalf("New = %v, want ok=%v", err2, tt.ok)
			}
		})
	}
}

func TestConfigFromSecret(t *testing.T) {
	data := map[string][]byte{
		"endpoint":           []byte("https://s3.example.com"),
		"bucket":             []byte("backups"),
		"region":             []byte("eu-west-1"),
		"accessKeyID":        []byte("AKID"),
		"secretAccessKey":    []byte("very-secret"),
		"prefix":             []byte("cluster-a/"),
		"insecureSkipVerify": []byte("true"),
	}
	c, err := ConfigFromSecret(data)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Endpoint: "https://s3.example.com", Bucket: "backups", Region: "eu-west-1", AccessKeyID: "AKID",
		SecretAccessKey: "very-secret", Prefix: "cluster-a/", InsecureSkipVerify: true}
	if len(c.CABundle) != 0 || c.Endpoint != want.Endpoint || c.Bucket != want.Bucket || c.Region != want.Region ||
		c.AccessKeyID != want.AccessKeyID || c.SecretAccessKey != want.SecretAccessKey || c.Prefix != want.Prefix ||
		c.InsecureSkipVerify != want.InsecureSkipVerify {
		t.Fatalf("ConfigFromSecret = %+v, want %+v", c, want)
	}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, "very-secret") {
			t.Fatalf("the secret key is printed: %s", s)
		}
	}
	data["insecureSkipVerify"] = []byte("maybe")
	if _, err := ConfigFromSecret(data); !errors.Is(err, ErrInvalid) {
		t.Fatalf("insecureSkipVerify=maybe: %v, want ErrInvalid", err)
	}
	delete(data, "bucket")
	data["insecureSkipVerify"] = []byte("false")
	if _, err := ConfigFromSecret(data); !errors.Is(err, ErrInvalid) {
		t.Fatalf("no bucket: %v, want ErrInvalid", err)
	}
}

func TestParseID(t *testing.T) {
	v := "v-" + strings.Repeat("a", 32)
	s := "s-" + strings.Repeat("b", 32)
	if gv, gs, err := ParseID(v + "/" + s); err != nil || gv != v || gs != s {
		t.Fatalf("ParseID(valid) = %q, %q, %v", gv, gs, err)
	}
	for _, id := range []string{
		"", v, s, v + "/", "/" + s, s + "/" + v, v + "/" + s + "/x", v + "/../" + s, "../" + v + "/" + s,
		v + "/" + s + "/../../x", v + "/s-" + strings.Repeat("B", 32), v + "/" + s + "\x00",
	} {
		if _, _, err := ParseID(id); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseID(%q) = %v, want ErrInvalid", id, err)
		}
	}
}
