package backend

import (
	"fmt"
	"math"
)

const (
	MiB = int64(1) << 20
	GiB = int64(1) << 30
)

// ResolveSize turns a CSI capacity range into one size: the required bytes
// (or, when nothing is asked, the minimum if set, else defaultBytes capped
// by the limit), rounded up
// to unit, and at least minimum (the source size for clones and restores).
// The result must stay within the limit, else ErrOutOfRange.
func ResolveSize(required, limit, defaultBytes, minimum, unit int64) (int64, error) {
	if required < 0 || limit < 0 {
		return 0, fmt.Errorf("negative capacity range (required %d, limit %d): %w", required, limit, ErrOutOfRange)
	}
	if limit > 0 && required > limit {
		return 0, fmt.Errorf("required %d exceeds limit %d: %w", required, limit, ErrOutOfRange)
	}
	size := required
	if size == 0 {
		// Unspecified: a clone or restore takes its source's size, a new
		// volume the default (capped by the limit).
		size = defaultBytes
		if minimum > 0 {
			size = minimum
		} else if limit > 0 && limit < size {
			size = limit
		}
	}
	if size < minimum {
		size = minimum
	}
	rounded, err := RoundUp(size, unit)
	if err != nil {
		return 0, err
	}
	if limit > 0 && rounded > limit {
		if size > limit {
			return 0, fmt.Errorf("size %d (at least the source's) exceeds limit %d: %w", size, limit, ErrOutOfRange)
		}
		return 0, fmt.Errorf("limit %d is below the %d-byte allocation unit: %w", limit, unit, ErrOutOfRange)
	}
	return rounded, nil
}

// RoundUp rounds n up to a multiple of unit, refusing overflow.
func RoundUp(n, unit int64) (int64, error) {
	if unit <= 0 {
		return n, nil
	}
	if n > math.MaxInt64-unit {
		return 0, fmt.Errorf("size %d: %w", n, ErrOutOfRange)
	}
	return (n + unit - 1) / unit * unit, nil
}

// Fits reports whether an existing size satisfies a capacity range.
func Fits(size, required, limit int64) bool {
	return size >= required && (limit == 0 || size <= limit)
}
