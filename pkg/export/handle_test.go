package export

import (
	"errors"
	"testing"
)

func TestParseHandle(t *testing.T) {
	const v, s = "v-0123456789abcdef0123456789abcdef", "s-0123456789abcdef0123456789abcdef"
	good := "export:backup/s3-exports/" + v + "/" + s
	h, err := ParseHandle(good)
	if err != nil || h != (Handle{SecretNamespace: "backup", SecretName: "s3-exports", ExportID: v + "/" + s}) || h.String() != good || !IsHandle(good) {
		t.Fatalf("ParseHandle(%q) = %+v, %v", good, h, err)
	}
	for _, bad := range []string{
		"", s, "export:", "export:backup/s3/" + v, "export:backup/s3/" + v + "/" + s + "/x",
		"export:Backup/s3/" + v + "/" + s, "export:backup/../" + v + "/" + s, "export:backup//" + v + "/" + s,
		"export:backup/s3/" + s + "/" + v, "export:backup/s3/" + v + "/../" + s, "snapshot:backup/s3/" + v + "/" + s,
	} {
		if _, err := ParseHandle(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseHandle(%q): %v, want ErrInvalid", bad, err)
		}
	}
}
