package config

import (
	"reflect"
	"slices"
)

// ChangedKeys returns the keys whose values differ between a and b, sorted:
// top-level keys by name ("listen", "backend", "workers") and the keys of
// the [health] table one by one ("health.rise"). A reload uses it to tell
// the settings it applies from those that need a restart.
func ChangedKeys(a, b *Config) []string {
	var out []string
	diffFields(reflect.ValueOf(*a), reflect.ValueOf(*b), "", &out)
	slices.Sort(out)
	return out
}

func diffFields(a, b reflect.Value, prefix string, out *[]string) {
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := tomlKey(f)
		if !f.IsExported() || tag == "" {
			continue
		}
		if f.Type == reflect.TypeFor[Health]() {
			diffFields(a.Field(i), b.Field(i), tag+".", out)
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			*out = append(*out, prefix+tag)
		}
	}
}
