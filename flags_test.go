package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/stickyd/stickyd/config"
)

// --help shows each flag once, with its environment twin and one default:
// the table's (no "(default: 0s)" from urfave/cli after it).
func TestHelpShowsOneDefault(t *testing.T) {
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	if err := app.Run([]string{"stickyd", "--help"}); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, s := range config.Settings() {
		line := flagLine(help, s.Flag())
		if line == "" {
			t.Errorf("--%s missing from --help", s.Flag())
			continue
		}
		if n := strings.Count(line, "default"); n > 1 {
			t.Errorf("--%s shows %d defaults: %s", s.Flag(), n, line)
		}
		if s.Default != "" && !strings.Contains(line, "(default: "+s.Default+")") {
			t.Errorf("--%s does not show its default %q: %s", s.Flag(), s.Default, line)
		}
		if !strings.Contains(line, "[$"+s.Env()+"]") {
			t.Errorf("--%s does not name $%s: %s", s.Flag(), s.Env(), line)
		}
	}
	if line := flagLine(help, "connect-timeout"); !strings.Contains(line, "(default: 5s)") {
		t.Errorf("--connect-timeout: %s", line)
	}
}

// flagLine is the line of help that describes --name.
func flagLine(help, name string) string {
	for line := range strings.SplitSeq(help, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "--"+name {
			return line
		}
	}
	return ""
}

// README.md documents every flag of the table.
func TestREADMENamesEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range config.Settings() {
		if !strings.Contains(string(readme), "`--"+s.Flag()) {
			t.Errorf("README.md does not document --%s", s.Flag())
		}
	}
}
