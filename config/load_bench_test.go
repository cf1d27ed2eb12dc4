package config

import (
	"bytes"
	"fmt"
	"testing"
)

// manyBackends is a config file with n [[backend]] tables of three keys.
func manyBackends(n int) []byte {
	var b bytes.Buffer
	b.WriteString("listen = \"127.0.0.1:3000\"\n")
	for i := range n {
		fmt.Fprintf(&b, "[[backend]]\nname = \"b%d\"\naddress = \"10.%d.%d.%d:80\"\nweight = 1\n",
			i, i>>16&255, i>>8&255, i&255)
	}
	return b.Bytes()
}

// BenchmarkLoad measures Load plus Validate, the path of serve, reload
// and check-config, for 1k and 10k backends:
//
//	go test -run '^$' -bench Load -benchtime 3x ./config/
func BenchmarkLoad(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		src := manyBackends(n)
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			for b.Loop() {
				cfg, err := Load(bytes.NewReader(src))
				if err != nil {
					b.Fatal(err)
				}
				if err := cfg.Validate(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
