package export

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Config says where exports go and with which credentials. Its fields map
// one to one onto the keys of a Kubernetes Secret (ConfigFromSecret).
type Config struct {
	// Endpoint is the S3 API's URL: https://host[:port] (or http:// for a
	// server on a trusted network, e.g. a test's loopback).
	Endpoint string
	Bucket   string
	// Region is empty for servers that do not care (most non-AWS ones).
	Region          string
	AccessKeyID     string
	SecretAccessKey string
	// Prefix puts every key under a folder of the bucket ("" or "a/b/").
	Prefix string
	// CABundle (PEM) replaces the system's roots for an https endpoint.
	CABundle []byte
	// InsecureSkipVerify accepts any server certificate (tests only).
	InsecureSkipVerify bool
	// PartSize is the multipart part size, and the memory one upload
	// holds; 10000 parts bound an export's size (default 32 MiB: 312 GiB).
	PartSize uint64
}

// The Secret keys ConfigFromSecret reads.
const (
	SecretEndpoint           = "endpoint"
	SecretBucket             = "bucket"
	SecretRegion             = "region"
	SecretAccessKeyID        = "accessKeyID"
	SecretSecretAccessKey    = "secretAccessKey"
	SecretPrefix             = "prefix"
	SecretCABundle           = "caBundle"
	SecretInsecureSkipVerify = "insecureSkipVerify"
)

// DefaultPartSize is Config.PartSize when it is zero.
const DefaultPartSize = 32 << 20

// minPartSize is S3's smallest part (every part but the last).
const minPartSize = 5 << 20

var (
	// S3's bucket naming rules (no IP-address check: the server refuses those).
	bucketPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	// Folder names of plain characters, each followed by a slash.
	prefixPattern = regexp.MustCompile(`^([A-Za-z0-9_][A-Za-z0-9._-]*/)*$`)
)

// ConfigFromSecret reads a Config from a Secret's data.
func ConfigFromSecret(data map[string][]byte) (Config, error) {
	c := Config{
		Endpoint:        string(data[SecretEndpoint]),
		Bucket:          string(data[SecretBucket]),
		Region:          string(data[SecretRegion]),
		AccessKeyID:     string(data[SecretAccessKeyID]),
		SecretAccessKey: string(data[SecretSecretAccessKey]),
		Prefix:          string(data[SecretPrefix]),
		CABundle:        data[SecretCABundle],
	}
	if v, ok := data[SecretInsecureSkipVerify]; ok {
		b, err := strconv.ParseBool(string(v))
		if err != nil {
			return Config{}, fmt.Errorf("%w: secret key %s: %q is not a boolean", ErrInvalid, SecretInsecureSkipVerify, v)
		}
		c.InsecureSkipVerify = b
	}
	return c, c.Validate()
}

// Validate checks every field before anything reaches the network.
func (c Config) Validate() error {
	if _, err := c.endpointURL(); err != nil {
		return err
	}
	if !bucketPattern.MatchString(c.Bucket) || strings.Contains(c.Bucket, "..") {
		return fmt.Errorf("%w: bucket %q is not a valid S3 bucket name", ErrInvalid, c.Bucket)
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return fmt.Errorf("%w: access key ID and secret access key are required", ErrInvalid)
	}
	if !prefixPattern.MatchString(c.Prefix) || len(c.Prefix) > 512 {
		return fmt.Errorf("%w: prefix %q: want folder names of letters, digits, '.', '_', '-', each ending in '/'", ErrInvalid, c.Prefix)
	}
	for _, part := range strings.Split(c.Prefix, "/") {
		if part == "." || part == ".." {
			return fmt.Errorf("%w: prefix %q has a %q folder", ErrInvalid, c.Prefix, part)
		}
	}
	if len(c.CABundle) > 0 && !x509.NewCertPool().AppendCertsFromPEM(c.CABundle) {
		return fmt.Errorf("%w: CA bundle holds no PEM certificate", ErrInvalid)
	}
	if c.PartSize != 0 && c.PartSize < minPartSize {
		return fmt.Errorf("%w: part size %d is below S3's minimum of %d", ErrInvalid, c.PartSize, minPartSize)
	}
	return nil
}

// String leaves the secret key out (a Config in a log line or error).
func (c Config) String() string {
	return fmt.Sprintf("{endpoint %s bucket %s region %q prefix %q access key %s}", c.Endpoint, c.Bucket, c.Region, c.Prefix, c.AccessKeyID)
}

// GoString is String, so %#v does not print the secret key either.
func (c Config) GoString() string { return c.String() }

func (c Config) endpointURL() (*url.URL, error) {
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("%w: endpoint: %w", ErrInvalid, err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: endpoint %q: want http(s)://host[:port]", ErrInvalid, c.Endpoint)
	}
	return u, nil
}

func (c Config) client() (*minio.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	u, _ := c.endpointURL()
	secure := u.Scheme == "https"
	transport, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, err
	}
	if secure {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in, for tests
		if len(c.CABundle) > 0 {
			tc.RootCAs = x509.NewCertPool()
			tc.RootCAs.AppendCertsFromPEM(c.CABundle)
		}
		transport.TLSClientConfig = tc
	}
	cl, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(c.AccessKeyID, c.SecretAccessKey, ""),
		Secure:       secure,
		Region:       c.Region,
		Transport:    transport,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return cl, nil
}

// errorsAs is errors.As for the minio error type (kept in one place).
func errorsAs(err error) (minio.ErrorResponse, bool) {
	var r minio.ErrorResponse
	if errors.As(err, &r) {
		return r, true
	}
	return r, false
}
