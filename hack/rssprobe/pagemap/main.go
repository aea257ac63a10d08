// Command pagemap shows which pages of a running Go program's binary are
// resident in its address space, by ELF section and, when the binary has
// a symbol table (built without -s), by package. It reads the process's
// /proc/PID/maps and /proc/PID/pagemap (present bits; run as root).
//
//	pagemap PID [UNSTRIPPED-COPY]
//
// The copy must be the same build without -s -w (the section layout is
// the same), e.g. from hack/rss-node.sh:
//
//	go build -o /tmp/pagemap ./hack/rssprobe/pagemap
//	HOOK=/tmp/pagemap hack/rss-node.sh /tmp/csi-thin   # PID and the binary
//
// Evidence for
// docs/performance.md (RSS): RssFile follows the binary's size.
package main

import (
	"bufio"
	"cmp"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

const page = 4096

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: pagemap PID [UNSTRIPPED-COPY]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "pagemap:", err)
		os.Exit(1)
	}
}

func run(pid string, symfile []string) error {
	exe, err := os.Readlink("/proc/" + pid + "/exe")
	if err != nil {
		return fmt.Errorf("exe: %w", err)
	}
	present, err := residentPages(pid, exe)
	if err != nil {
		return err
	}
	f, err := elf.Open(exe)
	if err != nil {
		return fmt.Errorf("open %s: %w", exe, err)
	}
	defer f.Close()
	fmt.Printf("%-20s %10s %12s\n", "section", "size KiB", "resident KiB")
	for _, s := range f.Sections {
		if s.Addr == 0 || s.Type == elf.SHT_NOBITS {
			continue
		}
		fmt.Printf("%-20s %10d %12d\n", s.Name, s.Size>>10, resident(present, s.Addr, s.Size)>>10)
	}
	if len(symfile) == 0 {
		return nil
	}
	sf, err := elf.Open(symfile[0])
	if err != nil {
		return fmt.Errorf("open %s: %w", symfile[0], err)
	}
	defer sf.Close()
	syms, err := sf.Symbols()
	if errors.Is(err, elf.ErrNoSymbols) {
		fmt.Printf("\n%s has no symbol table (built with -s): no packages\n", symfile[0])
		return nil
	}
	if err != nil {
		return fmt.Errorf("symbols of %s: %w", symfile[0], err)
	}
	type total struct {
		name          string
		size, residnt uint64
	}
	byPkg := map[string]*total{}
	for _, s := range syms {
		if s.Size == 0 || s.Size > 1<<26 {
			continue
		}
		p := pkgOf(s.Name)
		t := byPkg[p]
		if t == nil {
			t = &total{name: p}
			byPkg[p] = t
		}
		t.size += s.Size
		t.residnt += resident(present, s.Value, s.Size)
	}
	list := make([]*total, 0, len(byPkg))
	for _, t := range byPkg {
		list = append(list, t)
	}
	slices.SortFunc(list, func(a, b *total) int { return cmp.Compare(b.residnt, a.residnt) })
	fmt.Printf("\n%-50s %10s %12s  (symbols only; .gopclntab is not attributed)\n", "package", "size KiB", "resident KiB")
	for _, t := range list[:min(len(list), 30)] {
		fmt.Printf("%-50s %10d %12d\n", t.name, t.size>>10, t.residnt>>10)
	}
	return nil
}

// residentPages are the present pages of the mappings of exe.
func residentPages(pid, exe string) (map[uint64]bool, error) {
	maps, err := os.Open("/proc/" + pid + "/maps")
	if err != nil {
		return nil, fmt.Errorf("maps: %w", err)
	}
	defer maps.Close()
	pm, err := os.Open("/proc/" + pid + "/pagemap")
	if err != nil {
		return nil, fmt.Errorf("pagemap: %w", err)
	}
	defer pm.Close()
	present := map[uint64]bool{}
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("maps line %q", sc.Text())
		}
		buf := make([]byte, (end-start)/page*8)
		if _, err := pm.ReadAt(buf, int64(start/page*8)); err != nil {
			return nil, fmt.Errorf("pagemap at %#x: %w", start, err)
		}
		for i := range (end - start) / page {
			if binary.LittleEndian.Uint64(buf[i*8:])>>63 == 1 {
				present[start+i*page] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("maps: %w", err)
	}
	return present, nil
}

// resident is how many bytes of [addr, addr+size) lie on present pages.
func resident(present map[uint64]bool, addr, size uint64) uint64 {
	var n uint64
	for p := addr / page * page; p < addr+size; p += page {
		if present[p] {
			n += min(addr+size, p+page) - max(addr, p)
		}
	}
	return n
}

// pkgOf is a symbol's package, with the k8s.io/api groups folded into one.
func pkgOf(sym string) string {
	s := strings.TrimPrefix(sym, "go:itab.")
	s = strings.TrimPrefix(s, "type:")
	s = strings.TrimLeft(s, "*.")
	slash := strings.LastIndex(s, "/")
	if dot := strings.Index(s[slash+1:], "."); dot >= 0 {
		s = s[:slash+1+dot]
	}
	if strings.HasPrefix(s, "k8s.io/api/") {
		return "k8s.io/api/* (every built-in API group)"
	}
	return s
}
