package volstream

import (
	"crypto/sha256"
	"hash"

	"github.com/zeebo/xxh3"
)

// newDigest returns the whole-stream digest of a format version.
//
// The digest catches what the frames' crc32c can miss (a frame damaged so
// that its crc32c still matches: 1 in 2^32) and proves the stream whole.
// It is not a signature, and sha256 here was not one either: whoever can
// change the stream can compute either digest again. Authenticity comes
// from the transport (mutual TLS between nodes) and from who may write
// the bucket (docs/mobility.md). Version 2 chose XXH3-128 because sha256
// of every byte, once on each side, was the largest CPU cost of a stream
// after the copies (docs/performance.md, "Volume streams").
func newDigest(version uint16) hash.Hash {
	if version == 1 {
		return sha256.New()
	}
	return xxh128{xxh3.New()}
}

// xxh128 is XXH3's 128-bit digest as a hash.Hash (xxh3.Hasher's own Sum
// is the 64-bit one).
type xxh128 struct{ *xxh3.Hasher }

func (x xxh128) Sum(b []byte) []byte {
	sum := x.Sum128().Bytes()
	return append(b, sum[:]...)
}

func (x xxh128) Size() int { return 16 }
