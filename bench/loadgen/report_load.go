package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// The second table: the load scenarios of bench/run.sh, short connections
// beside bulk downloads (mix), open-loop runs at fixed rates (open) and
// long-lived connections exchanging small messages (chat).

// loadColumns are the second table's columns for the open-loop rates.
func loadColumns(rates []int) []column {
	cols := []column{
		{head: "mix conn/s", metric: "mix_conns_per_s"},
		{head: "mix p50 ms", metric: "mix_p50_ms", digits: 1},
		{head: "mix p99 ms", metric: "mix_p99_ms", digits: 1},
		{head: "mix MB/s", metric: "mix_MBps"},
	}
	for _, r := range rates {
		cols = append(cols,
			column{head: fmt.Sprintf("open %s/s p99 ms", levelName(r)), metric: fmt.Sprintf("open_p99_ms@%d", r), digits: 2},
			column{head: fmt.Sprintf("open %s/s CPU µs/conn", levelName(r)), metric: fmt.Sprintf("open_cpu_us_per_conn@%d", r)})
	}
	return append(cols,
		column{head: "chat msg/s", metric: "chat_msgs_per_s"},
		column{head: "chat p99 ms", metric: "chat_p99_ms", digits: 2},
		column{head: "chat CPU µs/msg", metric: "chat_cpu_us_per_msg", digits: 1})
}

// hasData reports whether any proxy has a value in one of cols.
func hasData(s samples, names []string, cols []column) bool {
	for _, p := range names {
		for _, c := range cols {
			if len(s[p][c.metric]) > 0 {
				return true
			}
		}
	}
	return false
}

// renderCPUPlotData writes one line per proxy: its CPU per connection at
// each open-loop rate and at saturation (the rate scenario), each preceded
// by the connections/s measured there, so the plot shows CPU per
// connection against load.
func renderCPUPlotData(s samples, proxies []string, rates []int) string {
	var b strings.Builder
	b.WriteString("# one block per proxy: conn/s, CPU µs per connection (medians); open-loop rates, then saturation\n")
	for _, p := range proxies {
		fmt.Fprintf(&b, "# %s\n", p)
		for _, r := range rates {
			writePoint(&b, s.value(p, fmt.Sprintf("open_conns_per_s@%d", r)), s.value(p, fmt.Sprintf("open_cpu_us_per_conn@%d", r)))
		}
		writePoint(&b, s.value(p, "conns_per_s"), s.value(p, "cpu_us_per_conn"))
		b.WriteString("\n\n") // a gnuplot index per proxy
	}
	return b.String()
}

func writePoint(b *strings.Builder, x, y float64) {
	if math.IsNaN(x) || math.IsNaN(y) {
		return
	}
	b.WriteString(strconv.FormatFloat(x, 'f', 0, 64) + " " + strconv.FormatFloat(y, 'f', 2, 64) + "\n")
}

// renderCPUPlotScript draws cpu-per-conn.dat into cpu-per-conn.png (base:
// the path without extension).
func renderCPUPlotScript(proxies []string, base string) string {
	var plots []string
	for i, p := range proxies {
		plots = append(plots, fmt.Sprintf("'%s.dat' index %d using 1:2 with linespoints lw 2 pt 7 ps 1.5 title '%s'", base, i, p))
	}
	return fmt.Sprintf(`set terminal pngcairo size 800,500 noenhanced
set output '%s.png'
set title 'Proxy CPU per short connection against load (open loop at fixed rates, then saturated)'
set xlabel 'connections per second'
set ylabel 'CPU µs per connection'
set grid
set key inside top right box opaque
set yrange [0:*]
plot %s
`, base, strings.Join(plots, ", \\\n     "))
}
