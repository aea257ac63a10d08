package pools

import "fmt"

// HumanBytes renders a byte count with a binary unit, keeping the sign
// (space "added" can be negative when a run frees more than it took).
func HumanBytes(n int64) string {
	sign := ""
	if n < 0 {
		sign, n = "-", -n
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%s%d B", sign, n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	v := float64(n) / unit
	i := 0
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	if v >= 100 || v == float64(int64(v)) {
		return fmt.Sprintf("%s%.0f %s", sign, v, units[i])
	}
	return fmt.Sprintf("%s%.1f %s", sign, v, units[i])
}
