package launchenv

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

func TestExpandHostlistExamples(t *testing.T) {
	for in, want := range map[string][]string{
		"localhost":             {"localhost"},
		"node[01-03,07]":        {"node01", "node02", "node03", "node07"},
		"node[01-03,07],login1": {"node01", "node02", "node03", "node07", "login1"},
		"a[8-10]":               {"a8", "a9", "a10"},
		"a[08-10]":              {"a08", "a09", "a10"},
		"r[1-2]n[1-2]":          {"r1n1", "r1n2", "r2n1", "r2n2"},
		"gpu[3]-ib,x":           {"gpu3-ib", "x"},
		"n-1.example.org":       {"n-1.example.org"},
	} {
		got, err := ExpandHostlist(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ExpandHostlist(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestExpandHostlistRefuses(t *testing.T) {
	for _, in := range []string{"", ",", "a,,b", "n[", "n]", "n[]", "n[1-", "n[3-1]", "n[a-b]", "n[1-2", "n[[1]]",
		"n[0-999999999]", "n[1-1000]m[1-1000]", "n[1234567890]", "n[-3]"} {
		if got, err := ExpandHostlist(in); err == nil {
			t.Errorf("ExpandHostlist(%q) = %d hosts, want an error", in, len(got))
		} else if !strings.Contains(err.Error(), "host list") {
			t.Errorf("ExpandHostlist(%q): error %q does not name the host list", in, err)
		}
	}
}

// compress is a naive reference encoder: the hosts one prefix, numbered
// with width digits, as one bracket group of single numbers and runs.
func compress(prefix string, width int, nums []int) string {
	var parts []string
	for i := 0; i < len(nums); {
		j := i
		for j+1 < len(nums) && nums[j+1] == nums[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, fmt.Sprintf("%0*d", width, nums[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%0*d-%0*d", width, nums[i], width, nums[j]))
		}
		i = j + 1
	}
	return prefix + "[" + strings.Join(parts, ",") + "]"
}

// Random host sets, compressed by the naive encoder and joined, expand to
// exactly the hosts they came from, in order.
func TestExpandHostlistRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 2000 {
		var want []string
		var items []string
		for g := range 1 + rng.IntN(4) {
			prefix := fmt.Sprintf("%s%d-", []string{"node", "gpu", "r", "x.y"}[rng.IntN(4)], g)
			width := 1 + rng.IntN(4)
			max := 1
			for range width {
				max *= 10
			}
			if rng.IntN(3) == 0 { // a plain name, no brackets
				items = append(items, prefix+"login")
				want = append(want, prefix+"login")
				continue
			}
			var nums []int
			n := rng.IntN(min(max, 30))
			for k := 0; k < max && len(nums) <= n; k++ {
				if rng.IntN(3) > 0 {
					nums = append(nums, k)
				}
			}
			if len(nums) == 0 {
				nums = []int{max - 1}
			}
			items = append(items, compress(prefix, width, nums))
			for _, k := range nums {
				want = append(want, fmt.Sprintf("%s%0*d", prefix, width, k))
			}
		}
		in := strings.Join(items, ",")
		got, err := ExpandHostlist(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("iteration %d: ExpandHostlist(%q) = %q, %v; want %q", iter, in, got, err, want)
		}
	}
}

// Any input either fails cleanly or expands to at most MaxHosts plain
// names, which, listed again, expand to themselves.
func FuzzExpandHostlist(f *testing.F) {
	for _, s := range []string{"node[01-03,07],login1", "r[1-2]n[1-2]", "a[08-10]", "n[", "n[0-99999]", "x[1-3]y[1-3]z[1-3]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hosts, err := ExpandHostlist(s)
		if err != nil {
			return
		}
		if len(hosts) == 0 || len(hosts) > MaxHosts {
			t.Fatalf("%q: %d hosts", s, len(hosts))
		}
		for _, h := range hosts {
			if h == "" || strings.ContainsAny(h, "[],") {
				t.Fatalf("%q: host %q is not a plain name", s, h)
			}
		}
		again, err := ExpandHostlist(strings.Join(hosts, ","))
		if err != nil || !reflect.DeepEqual(again, hosts) {
			t.Fatalf("%q: listing its hosts again gives %q, %v", s, again, err)
		}
	})
}
