// Command stickyd is a sticky-session layer-4 proxy: every TCP connection
// from a client IP goes to the same backend, chosen by a consistent hash, and
// the backend is told the real client address in a PROXY header.
//
// main.go wires the parts together; see README.md for the data path.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/stickyd/stickyd/hello"
	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(exitCode(newApp().Run(os.Args)))
}

// newApp is the command line: the serve action, its flags and the
// subcommands.
func newApp() *cli.App {
	return &cli.App{
		Name:            "stickyd",
		Usage:           "sticky-session layer-4 proxy: consistent client-IP hashing, PROXY protocol, splice",
		Version:         buildVersion(),
		Flags:           proxyFlags(),
		Action:          serve,
		HideHelpCommand: true,
		Commands: []*cli.Command{
			{Name: "version", Usage: "print the version", Action: func(*cli.Context) error {
				fmt.Println("stickyd", buildVersion())
				return nil
			}},
			{Name: "check-config", Usage: "validate a config file (default ./config.toml) and exit", ArgsUsage: "[FILE]", Flags: proxyFlags(), Action: checkConfig},
			{Name: "lookup", Usage: "print `<ip> <backend name>` for each IP (arguments, or stdin one per line)", ArgsUsage: "[IP ...]", Flags: proxyFlags(), Action: lookup},
			{Name: "hello-worker", Usage: "run the built-in demo worker (HTTP on $PORT or $SOCKET, PROXY header required)", Action: func(*cli.Context) error { return hello.Main() }},
		},
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error {
			return usageError("%v", err)
		},
		ExitErrHandler: func(*cli.Context, error) {}, // exit codes are decided by exitCode
	}
}

// exitCode prints err and maps it to the exit status: 0 clean, 2 usage or
// config, 1 anything else.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, err)
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}
