package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// samples maps proxy -> metric -> one value per repetition.
type samples map[string]map[string][]float64

// column is one column of the summary table.
type column struct {
	head   string
	metric string
	digits int
	level  int // idle columns: the connection count; 0 otherwise
}

// runReport reads the rows appended by the client modes and writes the
// medians as summary.csv, a markdown table (table.md, also printed) and the
// plot data mem-per-conn.dat.
func runReport(args []string) error {
	o, err := parseReportFlags(args)
	if err != nil {
		return err
	}
	f, err := os.Open(o.in)
	if err != nil {
		return err
	}
	defer f.Close()
	s, err := readSamples(f)
	if err != nil {
		return fmt.Errorf("%s: %w", o.in, err)
	}
	pairs, err := parseRatios(o.ratios, o.names)
	if err != nil {
		return err
	}
	return writeReport(o, s, pairs)
}

// reportOpts are report's flags, parsed.
type reportOpts struct {
	in, outdir, ratios string
	names              []string
	counts, rates      []int
}

func parseReportFlags(args []string) (reportOpts, error) {
	var o reportOpts
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.StringVar(&o.in, "in", "raw.csv", "rows written by rate, stream and idle")
	fs.StringVar(&o.outdir, "outdir", ".", "output directory")
	proxies := fs.String("proxies", "stickyd,haproxy,nginx", "row order; ratios compare the first to each other")
	levels := fs.String("levels", "1000,5000,9000", "idle connection counts")
	fs.StringVar(&o.ratios, "ratios", "", "ratio rows as a/b pairs, comma-separated (default: the first proxy over each other)")
	rateList := fs.String("rates", "1000,3000", "open-loop rates (connections/s) for the load table")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.names = strings.Split(*proxies, ",")
	var err error
	if o.counts, err = parseLevels(*levels); err != nil {
		return o, err
	}
	if o.rates, err = parseLevels(*rateList); err != nil {
		return o, fmt.Errorf("-rates: %w", err)
	}
	return o, nil
}

// writeReport prints the tables and writes them, the summary and the
// plots' data and scripts to o.outdir.
func writeReport(o reportOpts, s samples, pairs [][2]string) error {
	plotBase, err := filepath.Abs(filepath.Join(o.outdir, "mem-per-conn"))
	if err != nil {
		return err
	}
	var tables []string
	for _, cols := range [][]column{tableColumns(o.counts), loadColumns(o.rates)} {
		if hasData(s, o.names, cols) {
			tables = append(tables, renderTable(s, o.names, pairs, cols))
		}
	}
	table := strings.Join(tables, "\n")
	plotted := idleProxies(s, o.names, o.counts)
	fmt.Print(table)
	cpuBase := filepath.Join(filepath.Dir(plotBase), "cpu-per-conn")
	writes := map[string]string{
		"table.md":         table,
		"summary.csv":      renderSummary(s, o.names),
		"mem-per-conn.dat": renderPlotData(s, plotted, o.counts),
		"mem-per-conn.gp":  renderPlotScript(s, plotted, o.counts, plotBase),
		"cpu-per-conn.dat": renderCPUPlotData(s, o.names, o.rates),
		"cpu-per-conn.gp":  renderCPUPlotScript(o.names, cpuBase),
	}
	for name, content := range writes {
		if err := os.WriteFile(filepath.Join(o.outdir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func readSamples(r io.Reader) (samples, error) {
	rows, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return nil, err
	}
	s := samples{}
	for i, row := range rows {
		if i == 0 && len(row) > 0 && row[0] == "proxy" {
			continue
		}
		if len(row) != 4 {
			return nil, fmt.Errorf("line %d: want 4 fields, got %d", i+1, len(row))
		}
		v, err := strconv.ParseFloat(row[3], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if s[row[0]] == nil {
			s[row[0]] = map[string][]float64{}
		}
		s[row[0]][row[2]] = append(s[row[0]][row[2]], v)
	}
	return s, nil
}

func tableColumns(levels []int) []column {
	cols := []column{
		{head: "conn/s", metric: "conns_per_s"},
		{head: "p50 ms", metric: "p50_ms", digits: 2},
		{head: "p99 ms", metric: "p99_ms", digits: 2},
		{head: "CPU µs/conn", metric: "cpu_us_per_conn"},
		{head: "MB/s up", metric: "up_MBps"},
		{head: "MB/s down", metric: "down_MBps"},
		{head: "CPU s/GB", metric: "cpu_s_per_GB", digits: 2},
	}
	for _, kind := range []struct{ head, metric string }{
		{"RSS KB/conn", "rss_KB_per_conn"}, {"fds/conn", "fds_per_conn"}, {"slab KB/conn", "slab_KB_per_conn"},
	} {
		for _, l := range levels {
			cols = append(cols, column{head: fmt.Sprintf("%s @%s", kind.head, levelName(l)),
				metric: fmt.Sprintf("%s@%d", kind.metric, l), digits: 2, level: l})
		}
	}
	return cols
}

func levelName(l int) string {
	if l%1000 == 0 {
		return fmt.Sprintf("%dk", l/1000)
	}
	return strconv.Itoa(l)
}

// value is the median of a proxy's metric, NaN if it was not measured.
func (s samples) value(proxy, metric string) float64 {
	return median(s[proxy][metric])
}

// cell renders one table cell: the median, "fail@N" for an idle level the
// proxy did not reach (N: median connections reached), "–" if not measured.
func (s samples) cell(proxy string, c column) string {
	if c.level > 0 {
		if reached := s.value(proxy, fmt.Sprintf("reached@%d", c.level)); reached < float64(c.level) {
			return fmt.Sprintf("fail@%.0f", reached)
		}
	}
	v := s.value(proxy, c.metric)
	if math.IsNaN(v) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', c.digits, 64)
}

// parseRatios reads "a/b,c/d"; empty means names[0] over each other name.
func parseRatios(list string, names []string) ([][2]string, error) {
	var pairs [][2]string
	if list == "" {
		for _, other := range names[1:] {
			pairs = append(pairs, [2]string{names[0], other})
		}
		return pairs, nil
	}
	for _, r := range strings.Split(list, ",") {
		a, b, ok := strings.Cut(r, "/")
		if !ok || !slices.Contains(names, a) || !slices.Contains(names, b) {
			return nil, fmt.Errorf("ratio %q: want a/b with both in -proxies", r)
		}
		pairs = append(pairs, [2]string{a, b})
	}
	return pairs, nil
}

// idleProxies are the proxies with idle measurements: the plot's lines
// (bench/floor only runs the rate scenario).
func idleProxies(s samples, names []string, levels []int) []string {
	var out []string
	for _, p := range names {
		if len(s[p][fmt.Sprintf("reached@%d", levels[0])]) > 0 {
			out = append(out, p)
		}
	}
	return out
}

func renderTable(s samples, proxies []string, pairs [][2]string, cols []column) string {
	var b strings.Builder
	heads := []string{"proxy"}
	for _, c := range cols {
		heads = append(heads, c.head)
	}
	b.WriteString("| " + strings.Join(heads, " | ") + " |\n")
	b.WriteString("|" + strings.Repeat(" --- |", len(heads)) + "\n")
	for _, p := range proxies {
		row := []string{p}
		if s[p] == nil {
			row[0] += " (not run)"
		}
		for _, c := range cols {
			row = append(row, s.cell(p, c))
		}
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	for _, pr := range pairs {
		row := []string{fmt.Sprintf("%s ÷ %s", pr[0], pr[1])}
		for _, c := range cols {
			row = append(row, ratio(s.value(pr[0], c.metric), s.value(pr[1], c.metric)))
		}
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	return b.String()
}

func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "–"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64) + "x"
}

// renderSummary lists every metric of every proxy with its median, range and
// repetition count.
func renderSummary(s samples, proxies []string) string {
	var b strings.Builder
	b.WriteString("proxy,metric,median,min,max,reps\n")
	for _, p := range proxies {
		metrics := make([]string, 0, len(s[p]))
		for m := range s[p] {
			metrics = append(metrics, m)
		}
		slices.Sort(metrics)
		for _, m := range metrics {
			vs := s[p][m]
			fmt.Fprintf(&b, "%s,%s,%.6g,%.6g,%.6g,%d\n", p, m, median(vs), slices.Min(vs), slices.Max(vs), len(vs))
		}
	}
	return b.String()
}

// renderPlotData writes one line per idle level: the level, then each
// proxy's median RSS KB per connection (NaN where not measured or failed).
func renderPlotData(s samples, proxies []string, levels []int) string {
	var b strings.Builder
	b.WriteString("# connections " + strings.Join(proxies, " ") + "  (RSS KB per connection, median)\n")
	for _, l := range levels {
		b.WriteString(strconv.Itoa(l))
		for _, p := range proxies {
			v := s.value(p, fmt.Sprintf("rss_KB_per_conn@%d", l))
			if s.value(p, fmt.Sprintf("reached@%d", l)) < float64(l) {
				v = math.NaN()
			}
			b.WriteString(" " + strconv.FormatFloat(v, 'f', 3, 64))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// renderPlotScript is the gnuplot script that draws mem-per-conn.dat into
// mem-per-conn.png (base is the path without extension). A proxy that
// failed a level says so in its key entry.
func renderPlotScript(s samples, proxies []string, levels []int, base string) string {
	var plots []string
	for i, p := range proxies {
		title := p
		for _, l := range levels {
			if reached := s.value(p, fmt.Sprintf("reached@%d", l)); reached < float64(l) {
				title = fmt.Sprintf("%s (failed at %.0f connections)", p, reached)
				break
			}
		}
		plots = append(plots, fmt.Sprintf("'%s.dat' using 1:%d with linespoints lw 2 pt 7 ps 1.5 title '%s'", base, i+2, title))
	}
	reps := 0
	for _, p := range proxies {
		reps = max(reps, len(s[p]["reached@"+strconv.Itoa(levels[0])]))
	}
	var xtics []string
	for _, l := range levels {
		xtics = append(xtics, strconv.Itoa(l))
	}
	return fmt.Sprintf(`set terminal pngcairo size 800,500 noenhanced
set output '%s.png'
set title 'Proxy RSS growth per idle proxied connection (median of %d)'
set xlabel 'idle connections'
set ylabel 'RSS KB per connection'
set grid
set key inside top right box opaque
set offsets graph 0.05, graph 0.05, graph 0.3, 0
set yrange [0:*]
set xtics (%s)
plot %s
`, base, reps, strings.Join(xtics, ", "), strings.Join(plots, ", \\\n     "))
}

// runPorts prints -n free TCP ports on 127.0.0.1, space-separated.
func runPorts(args []string) error {
	fs := flag.NewFlagSet("ports", flag.ContinueOnError)
	n := fs.Int("n", 1, "how many")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return printFreePorts(*n)
}
