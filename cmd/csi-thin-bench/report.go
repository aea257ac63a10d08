package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/report"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

// runReport is `csi-thin-bench report [-out-dir DIR] INPUT...`: it merges
// raw results (JSON files, or console logs of a VM run holding the JSON
// between markers) into DIR/report.md and DIR/chart.png and prints the
// summary table.
func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	outDir := fs.String("out-dir", "results", "where report.md and chart.png go")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("report: no inputs (raw JSON files or VM console logs)")
	}
	var runs []*results.Run
	for _, in := range fs.Args() {
		r, err := readRun(in)
		if err != nil {
			return err
		}
		runs = append(runs, r)
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return fmt.Errorf("report dir: %w", err)
	}
	const chart = "chart.png"
	if err := report.Chart(runs, filepath.Join(*outDir, chart)); err != nil {
		return err
	}
	md := filepath.Join(*outDir, "report.md")
	if err := os.WriteFile(md, []byte(report.Markdown(runs, chart)), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	fmt.Print(report.Text(runs))
	fmt.Printf("\nreport: %s\nchart:  %s\n", md, filepath.Join(*outDir, chart))
	return nil
}

// readRun loads one run from a JSON file or from the JSON between the
// markers in a console log.
func readRun(path string) (*results.Run, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	if i := bytes.Index(data, []byte(jsonBegin)); i >= 0 {
		data = data[i+len(jsonBegin):]
		j := bytes.Index(data, []byte(jsonEnd))
		if j < 0 {
			return nil, fmt.Errorf("%s: results begin but never end (the run was cut short?)", path)
		}
		data = data[:j]
	}
	var r results.Run
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: not benchmark results: %w", path, err)
	}
	return &r, nil
}
