package moe

import (
	"strings"
	"testing"
)

// Every config name of the layer's enumerations parses to the value whose
// String it is, "" is the zero value, and an unknown name is an error that
// names it and every known name.
func TestConfigNamesRoundTrip(t *testing.T) {
	check := func(kind string, values int, parse func(string) (int, error), name func(int) string) {
		t.Helper()
		if v, err := parse(""); err != nil || v != 0 {
			t.Errorf("%s: \"\" parses as %d, %v", kind, v, err)
		}
		var known []string
		for v := 0; v < values; v++ {
			n := name(v)
			known = append(known, `"`+n+`"`)
			if got, err := parse(n); err != nil || got != v {
				t.Errorf("%s: %q parses as %d, %v; want %d", kind, n, got, err, v)
			}
		}
		_, err := parse("nope")
		if err == nil || !strings.Contains(err.Error(), `unknown `+kind+` "nope"`) ||
			!strings.Contains(err.Error(), "(known: "+strings.Join(known, ", ")+")") {
			t.Errorf("%s: unknown name: %v", kind, err)
		}
		if name(values) != name(0) {
			t.Errorf("%s: out-of-range value reads as %q, want %q", kind, name(values), name(0))
		}
	}
	check("score", 2, func(s string) (int, error) { v, err := ParseScore(s); return int(v), err },
		func(v int) string { return Score(v).String() })
	check("drop policy", 2, func(s string) (int, error) { v, err := ParseDropPolicy(s); return int(v), err },
		func(v int) string { return DropPolicy(v).String() })
	check("dispatch dtype", 3, func(s string) (int, error) { v, err := ParseDType(s); return int(v), err },
		func(v int) string { return DType(v).String() })
	if Sigmoid.String() != "sigmoid" || DropPosition.String() != "position" || FP8E4M3.String() != "fp8e4m3" {
		t.Error("config names out of order")
	}
}
