package launchenv

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxHosts bounds what ExpandHostlist returns, so that a hostile or
// mistyped range (node[0-999999999]) is an error, not an allocation.
const MaxHosts = 1 << 16

// ExpandHostlist expands Slurm's compressed host list syntax, as in
// SLURM_JOB_NODELIST: comma-separated names, each with zero or more
// bracket groups of comma-separated numbers and lo-hi ranges, e.g.
// "node[01-03,07],login1" or "r[1-2]n[1-2]" (the product, in order). A
// range keeps the width of its lower bound, zero-padded ("[08-10]" is 08,
// 09, 10). Names are returned in order, duplicates kept.
func ExpandHostlist(s string) ([]string, error) {
	var out []string
	for _, item := range splitTop(s) {
		if item == "" {
			return nil, fmt.Errorf("host list %q: empty name", s)
		}
		hosts, err := expandItem(item, MaxHosts-len(out))
		if err != nil {
			return nil, fmt.Errorf("host list %q: %w", s, err)
		}
		out = append(out, hosts...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("host list %q: no hosts", s)
	}
	return out, nil
}

// splitTop splits s at the commas outside brackets.
func splitTop(s string) []string {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '[':
			depth++
		case ']':
			depth--
		case ',':
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	return append(parts, s[start:])
}

// expandItem expands one name with its bracket groups into at most limit
// names.
func expandItem(item string, limit int) ([]string, error) {
	out := []string{""}
	rest := item
	for rest != "" {
		open := strings.IndexByte(rest, '[')
		if open < 0 {
			if strings.IndexByte(rest, ']') >= 0 {
				return nil, fmt.Errorf("%q: ']' without '['", item)
			}
			out = appendAll(out, []string{rest})
			break
		}
		closing := strings.IndexByte(rest[open:], ']')
		if closing < 0 {
			return nil, fmt.Errorf("%q: '[' without ']'", item)
		}
		closing += open
		prefix, group := rest[:open], rest[open+1:closing]
		if strings.ContainsAny(prefix, "]") || strings.ContainsAny(group, "[") {
			return nil, fmt.Errorf("%q: unbalanced brackets", item)
		}
		nums, err := expandGroup(group, limit/len(out))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		out = appendAll(appendAll(out, []string{prefix}), nums)
		rest = rest[closing+1:]
	}
	if len(out) > limit {
		return nil, fmt.Errorf("more than %d hosts", MaxHosts)
	}
	return out, nil
}

// appendAll is the product of names and suffixes, names major.
func appendAll(names, suffixes []string) []string {
	out := make([]string, 0, len(names)*len(suffixes))
	for _, n := range names {
		for _, s := range suffixes {
			out = append(out, n+s)
		}
	}
	return out
}

// expandGroup expands the inside of one bracket group into at most limit
// numbers (limit ≥ 1 is the caller's remaining budget).
func expandGroup(group string, limit int) ([]string, error) {
	if group == "" {
		return nil, fmt.Errorf("empty brackets")
	}
	var out []string
	for _, r := range strings.Split(group, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		if !isRange {
			hi = lo
		}
		a, err := parseNum(lo)
		if err != nil {
			return nil, err
		}
		b, err := parseNum(hi)
		if err != nil {
			return nil, err
		}
		if b < a {
			return nil, fmt.Errorf("range %q: upper bound below lower", r)
		}
		if left := limit - len(out); left <= 0 || b-a >= uint64(left) {
			return nil, fmt.Errorf("range %q: more than %d hosts", r, MaxHosts)
		}
		for n := a; n <= b; n++ {
			out = append(out, fmt.Sprintf("%0*d", len(lo), n))
		}
	}
	return out, nil
}

// parseNum parses a range bound: 1 to 9 decimal digits.
func parseNum(s string) (uint64, error) {
	if s == "" || len(s) > 9 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q: a range bound must be 1 to 9 digits", s)
	}
	return strconv.ParseUint(s, 10, 64)
}
