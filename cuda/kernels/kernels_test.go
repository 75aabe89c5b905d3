package kernels

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestPTXMatchesSources: every .cu has PTX for every target architecture,
// stamped with the hash of its current sources (the .cu and the shared
// headers), and no PTX is left without its source. Run
// scripts/build-ptx.sh after editing a kernel.
func TestPTXMatchesSources(t *testing.T) {
	srcs, _ := filepath.Glob("*.cu")
	if len(srcs) == 0 {
		t.Fatal("no kernel sources")
	}
	hdrs, _ := filepath.Glob("*.cuh")
	sort.Strings(hdrs)
	var hdrBytes []byte
	for _, h := range hdrs {
		b, err := os.ReadFile(h)
		if err != nil {
			t.Fatal(err)
		}
		hdrBytes = append(hdrBytes, b...)
	}
	want := map[string]bool{}
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(append(b, hdrBytes...))
		stamp := "// moetrain source-sha256 " + hex.EncodeToString(sum[:])
		name := strings.TrimSuffix(src, ".cu")
		for _, a := range Archs {
			p := fmt.Sprintf("ptx/%s.sm_%d.ptx", name, a)
			want[p] = true
			ptx, err := os.ReadFile(p)
			if err != nil {
				t.Errorf("%s has no PTX for sm_%d (run scripts/build-ptx.sh %s)", src, a, src)
				continue
			}
			first, _, _ := strings.Cut(string(ptx), "\n")
			if first != stamp {
				t.Errorf("%s is stale: stamp %q, sources hash to %q (run scripts/build-ptx.sh %s)", p, first, stamp, src)
			}
			if len(entries(ptx)) == 0 {
				t.Errorf("%s defines no kernel", p)
			}
		}
	}
	all, _ := filepath.Glob("ptx/*.ptx")
	for _, p := range all {
		if !want[p] {
			t.Errorf("%s has no source .cu", p)
		}
	}
}

func TestArchFor(t *testing.T) {
	for _, c := range []struct{ major, minor, want int }{{8, 0, 80}, {8, 6, 80}, {8, 9, 80}, {9, 0, 90}, {10, 0, 90}, {12, 0, 90}} {
		got, err := ArchFor(c.major, c.minor)
		if err != nil || got != c.want {
			t.Errorf("ArchFor(%d.%d) = %d, %v; want %d", c.major, c.minor, got, err, c.want)
		}
	}
	if _, err := ArchFor(7, 5); err == nil {
		t.Error("ArchFor(7.5) accepted a GPU older than sm_80")
	}
}

func TestEntries(t *testing.T) {
	ptx := []byte(".version 7.8\n.visible .entry rmsnorm_fwd_f32(\n\t.param .u64 a\n)\n.entry other (\n")
	got := entries(ptx)
	if len(got) != 2 || got[0] != "rmsnorm_fwd_f32" || got[1] != "other" {
		t.Fatalf("entries = %v", got)
	}
}
