package checkpoint

import (
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
)

// TestCrashHelperProcess is not a test: TestSIGKILLDuringCheckpoint runs the
// test binary on it in a child process, which writes and commits step 2 of
// the store in CK_CRASH_DIR and SIGKILLs itself at CK_CRASH_POINT.
func TestCrashHelperProcess(t *testing.T) {
	dir, point := os.Getenv("CK_CRASH_DIR"), os.Getenv("CK_CRASH_POINT")
	if dir == "" {
		t.Skip("helper process for TestSIGKILLDuringCheckpoint")
	}
	s, err := NewStore(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	die := func(p string) error {
		if p == point {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
		return nil
	}
	s.crashHook = die
	rng := rand.New(rand.NewPCG(31, 32))
	ts, layout := standardTensors(rng)
	l := layout(2)
	m := &Manifest{Version: ManifestVersion, Step: 2}
	for r := 0; r < 2; r++ {
		m.Shards = append(m.Shards, closedShard(t, s, 2, r, WriterOptions{ChunkBytes: 64}, func(w *ShardWriter) error {
			if err := rankPieces(ts[:3], l, r)(w); err != nil {
				return err
			}
			if r == 1 {
				die("mid-shard") // after rank 1's third tensor
			}
			return rankPieces(ts[3:], l, r)(w)
		}))
	}
	if err := s.Commit(m); err != nil {
		t.Fatal(err)
	}
	die("after-commit")
}

// TestSIGKILLDuringCheckpoint kills a real process at each stage of writing
// and committing a checkpoint, then checks that the previous checkpoint
// loads (or the new one, once published), that Cleanup removes the debris
// and that the next checkpoint commits.
func TestSIGKILLDuringCheckpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	rng := rand.New(rand.NewPCG(31, 32))
	ts, layout := standardTensors(rng)
	l := layout(2)
	points := append([]crashPoint{{"mid-shard", false}}, commitCrashPoints...)
	for _, tc := range append(points, crashPoint{"after-commit", true}) {
		t.Run(tc.point, func(t *testing.T) {
			s, err := NewStore(t.TempDir(), 1)
			if err != nil {
				t.Fatal(err)
			}
			saveTest(t, s, 1, ts, l, 2, WriterOptions{})
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelperProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), "CK_CRASH_DIR="+s.Dir(), "CK_CRASH_POINT="+tc.point)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper did not die by SIGKILL: %v\n%s", err, out)
			}
			c := openAfterCrash(t, s, tc.point, tc.published)
			for _, tt := range ts {
				got, _, err := c.ReadTensor(tt.name)
				if err != nil || !slices.Equal(got, tt.data) {
					t.Fatalf("%s after SIGKILL: %v", tt.name, err)
				}
			}
			c.Close()
			if _, err := s.Cleanup(); err != nil {
				t.Fatal(err)
			}
			saveTest(t, s, 3, ts, l, 2, WriterOptions{})
			steps, err := s.Steps()
			if err != nil || len(steps) != 1 || steps[0] != 3 {
				t.Fatalf("steps after recovery: %v %v", steps, err)
			}
			ents, _ := os.ReadDir(s.Dir())
			if len(ents) != 2 { // step-000003 and LATEST
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Fatalf("debris left: %v", names)
			}
		})
	}
}
