package moe

import (
	"fmt"
	"strings"
)

// configNames are the config names of an enumeration, indexed by value;
// what names the zero value is also what "" parses as.
type configNames[T ~int | ~uint8] struct {
	kind  string // what the value is, for errors ("score", "drop policy")
	names []string
}

// parse maps a config name to its value; "" is the zero value.
func (c configNames[T]) parse(s string) (T, error) {
	if s == "" {
		return 0, nil
	}
	for v, name := range c.names {
		if name == s {
			return T(v), nil
		}
	}
	quoted := make([]string, len(c.names))
	for i, name := range c.names {
		quoted[i] = fmt.Sprintf("%q", name)
	}
	return 0, fmt.Errorf("unknown %s %q (known: %s)", c.kind, s, strings.Join(quoted, ", "))
}

// name is v's config name; a value out of range reads as the zero value's.
func (c configNames[T]) name(v T) string {
	if v < 0 || int(v) >= len(c.names) {
		return c.names[0]
	}
	return c.names[v]
}
