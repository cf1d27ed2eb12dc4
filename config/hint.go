package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// keyHint says what an unknown key at path (its tables, then the key) was
// probably meant to be: a known key of the same table one or two typos
// away (send_proxi, adress, or a flag's send-proxy), or the table the key
// belongs to (listen written after [workers] belongs to [workers], as TOML
// reads it). It returns "" for a known key, or when nothing is close.
func keyHint(path []string) string {
	if len(path) == 0 {
		return ""
	}
	table, key := path[:len(path)-1], path[len(path)-1]
	t := tableType(reflect.TypeFor[Config](), table)
	if t == nil {
		return ""
	}
	keys := tomlKeys(t)
	if slices.Contains(keys, key) {
		return ""
	}
	if best := closest(key, keys); best != "" {
		return fmt.Sprintf("did you mean %q?", strings.Join(append(slices.Clone(table), best), "."))
	}
	for _, other := range configTables {
		if slices.Equal(other, table) || !slices.Contains(tomlKeys(tableType(reflect.TypeFor[Config](), other)), key) {
			continue
		}
		if len(other) == 0 {
			return fmt.Sprintf("%q is a top-level key: move it above the first [table] header (TOML puts a key in the last table opened above it)", key)
		}
		return fmt.Sprintf("%q is a key of %s: move it under that header", key, tableName(other))
	}
	return ""
}

// configTables are the tables of a config file, the top level first.
var configTables = [][]string{nil, {"workers"}, {"backend"}, {"health"}}

// tableName names a table as a config file opens it.
func tableName(table []string) string {
	if table[0] == "backend" {
		return "[[backend]]"
	}
	return "[" + strings.Join(table, ".") + "]"
}

// tableType is the struct type that table decodes into, from t (the
// config's), or nil if there is none (a map, such as [workers.env], takes
// any key).
func tableType(t reflect.Type, table []string) reflect.Type {
	for _, name := range table {
		if t.Kind() != reflect.Struct {
			return nil // a map ([workers.env]) or a value: no table of ours below
		}
		f, ok := fieldByKey(t, name)
		if !ok {
			return nil
		}
		t = f.Type
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	return t
}

// tomlKeys are the keys of struct type t (nil: none), in field order.
func tomlKeys(t reflect.Type) []string {
	if t == nil {
		return nil
	}
	var keys []string
	for i := range t.NumField() {
		if key := tomlKey(t.Field(i)); key != "" && key != "-" {
			keys = append(keys, key)
		}
	}
	return keys
}

// closest is the candidate that word is the fewest edits from, within
// typoBudget of it (the first of equals), or "" when none is that close.
func closest(word string, candidates []string) string {
	best, bestD := "", 0
	for _, c := range candidates {
		if d := editDistance(word, c); d <= typoBudget(c) && (best == "" || d < bestD) {
			best, bestD = c, d
		}
	}
	return best
}

// typoBudget is how many edits from key a typo may be: one for short
// keys (dns, dir), two from six letters on.
func typoBudget(key string) int {
	if len(key) < 6 {
		return 1
	}
	return 2
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and swaps of neighbours, one each.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range cur {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
