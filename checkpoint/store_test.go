package checkpoint

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestCorruptionIsDetectedAndNamed(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	ts, layout := standardTensors(rng)
	big := newTestTensor(rng, "model.big", 64, 64) // several chunks per shard
	ts = append(ts, big)
	l := layout(2)
	l["model.big"] = []Region{DimRange(big.shape, 0, 0, 32), DimRange(big.shape, 0, 32, 32)}
	opts := WriterOptions{ChunkBytes: 1024}
	setup := func(t *testing.T) (*Store, string) {
		s := newTestStore(t, 0)
		saveTest(t, s, 1, ts, l, 2, opts)
		saveTest(t, s, 2, ts, l, 2, opts)
		return s, filepath.Join(s.StepDir(2), ShardName(1))
	}
	// chunkOf finds the file offset of model.big's first chunk in a shard.
	chunkOf := func(t *testing.T, path string) chunkEntry {
		r, err := OpenShard(path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		return r.byName["model.big"].Chunks[1]
	}
	wantNamed := func(t *testing.T, err error, parts ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("corruption not detected (want %v)", parts)
		}
		for _, p := range parts {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("error %q does not name %q", err, p)
			}
		}
	}

	t.Run("truncated", func(t *testing.T) {
		s, shard := setup(t)
		st, _ := os.Stat(shard)
		if err := os.Truncate(shard, st.Size()/2); err != nil {
			t.Fatal(err)
		}
		_, err := OpenDir(s.StepDir(2), OpenOptions{})
		wantNamed(t, err, shard, "truncated")
		c, rep, err := s.Open("latest", OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if rep.Step != 1 || len(rep.Skipped) != 1 || rep.Skipped[0].Step != 2 || !strings.Contains(rep.Skipped[0].Reason.Error(), shard) {
			t.Fatalf("fallback report: %s", rep)
		}
	})

	t.Run("flipped-bit-in-chunk", func(t *testing.T) {
		s, shard := setup(t)
		ch := chunkOf(t, shard)
		flipBit(t, shard, ch.Off+ch.Stored/2, 3)
		// Quick open does not read data; the read of the tensor detects it.
		c, err := OpenDir(s.StepDir(2), OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = c.ReadTensor("model.big")
		wantNamed(t, err, shard, `"model.big"`, "checksum mismatch")
		wantNamed(t, c.Verify(), shard, `"model.big"`)
		c.Close()
		// A full-verify open of "latest" falls back to step 1.
		c, rep, err := s.Open("latest", OpenOptions{Verify: VerifyFull})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if rep.Step != 1 || len(rep.Skipped) != 1 {
			t.Fatalf("fallback report: %s", rep)
		}
		if got, _, err := c.ReadTensor("model.big"); err != nil || !slices.Equal(got, big.data) {
			t.Fatalf("step 1 read: %v", err)
		}
	})

	t.Run("flipped-bit-in-index", func(t *testing.T) {
		s, shard := setup(t)
		st, _ := os.Stat(shard)
		flipBit(t, shard, st.Size()-trailerSize-10, 0)
		_, err := OpenDir(s.StepDir(2), OpenOptions{})
		wantNamed(t, err, shard, "index checksum")
	})

	t.Run("flipped-bit-in-trailer", func(t *testing.T) {
		s, shard := setup(t)
		st, _ := os.Stat(shard)
		flipBit(t, shard, st.Size()-trailerSize+20, 5) // file CRC
		_, err := OpenDir(s.StepDir(2), OpenOptions{})
		wantNamed(t, err, shard, "checksum")
	})

	t.Run("missing-shard", func(t *testing.T) {
		s, shard := setup(t)
		if err := os.Remove(shard); err != nil {
			t.Fatal(err)
		}
		_, err := OpenDir(s.StepDir(2), OpenOptions{})
		wantNamed(t, err, ShardName(1))
	})

	t.Run("corrupt-manifest", func(t *testing.T) {
		s, _ := setup(t)
		mp := filepath.Join(s.StepDir(2), ManifestFile)
		flipBit(t, mp, 5, 1)
		_, err := OpenDir(s.StepDir(2), OpenOptions{})
		wantNamed(t, err, mp)
	})
}

func flipBit(t *testing.T, path string, off int64, bit uint) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 1 << bit
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestCommitCrashPoints stops Commit at each step of the protocol (as a crash
// would) and checks that the previous checkpoint stays loadable, that the new
// one is visible exactly when it was published, and that Cleanup and the
// next commit recover.
func TestCommitCrashPoints(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	ts, layout := standardTensors(rng)
	l := layout(2)
	for _, tc := range commitCrashPoints {
		t.Run(tc.point, func(t *testing.T) {
			s := newTestStore(t, 1)
			saveTest(t, s, 1, ts, l, 2, WriterOptions{})
			crash := errors.New("crash")
			s.crashHook = func(p string) error {
				if p == tc.point {
					return crash
				}
				return nil
			}
			m := &Manifest{Version: ManifestVersion, Step: 2}
			rankShards(t, s, m, 2, ts, l, WriterOptions{})
			if err := s.Commit(m); !errors.Is(err, crash) {
				t.Fatalf("commit: %v", err)
			}
			s.crashHook = nil
			openAfterCrash(t, s, tc.point, tc.published).Close()
			if c1, _, err := s.Open("1", OpenOptions{Verify: VerifyFull}); err != nil {
				t.Fatalf("previous checkpoint not loadable: %v", err)
			} else {
				c1.Close()
			}
			removed, err := s.Cleanup()
			if err != nil {
				t.Fatal(err)
			}
			if tc.published != (len(removed) == 0) {
				t.Fatalf("cleanup removed %v", removed)
			}
			saveTest(t, s, 3, ts, l, 2, WriterOptions{})
			steps, _ := s.Steps()
			if len(steps) != 1 || steps[0] != 3 {
				t.Fatalf("after keep=1 commit: steps %v", steps)
			}
			if l, ok := s.Latest(); !ok || l != 3 {
				t.Fatalf("LATEST = %d %v", l, ok)
			}
		})
	}
}

func TestKeepLastAndBegin(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	ts, layout := standardTensors(rng)
	s := newTestStore(t, 2)
	for step := int64(1); step <= 4; step++ {
		saveTest(t, s, step*100, ts, layout(1), 1, WriterOptions{})
	}
	steps, err := s.Steps()
	if err != nil || len(steps) != 2 || steps[0] != 300 || steps[1] != 400 {
		t.Fatalf("steps %v %v", steps, err)
	}
	if _, err := s.Begin(400); err == nil {
		t.Fatal("Begin of a committed step succeeded")
	}
	if _, _, err := s.Open("200", OpenOptions{}); err == nil {
		t.Fatal("opened a pruned step")
	}
	// A stray non-checkpoint directory is left alone by Cleanup.
	other := filepath.Join(s.Dir(), "notes.tmp")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatal("Cleanup removed a directory it does not own")
	}
}

func TestOpenEmptyStore(t *testing.T) {
	s := newTestStore(t, 0)
	if _, _, err := s.Open("latest", OpenOptions{}); err == nil || !strings.Contains(err.Error(), "no checkpoint") {
		t.Fatalf("empty store: %v", err)
	}
}

// TestRetryAfterCrashedAttempt: a crashed attempt at a step with more ranks
// leaves shards in step-N.tmp; the retry with fewer ranks publishes only its
// own files.
func TestRetryAfterCrashedAttempt(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 44))
	ts, layout := standardTensors(rng)
	s := newTestStore(t, 0)
	l4 := layout(4)
	for r := 0; r < 4; r++ { // the attempt that never committed
		closedShard(t, s, 5, r, WriterOptions{}, rankPieces(ts, l4, r))
	}
	saveTest(t, s, 5, ts, layout(2), 2, WriterOptions{})
	ents, err := os.ReadDir(s.StepDir(5))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 3 {
		t.Fatalf("published %d files, want 2 shards + manifest", len(ents))
	}
	c, _, err := s.Open("latest", OpenOptions{Verify: VerifyFull})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tt := range ts {
		if got, _, err := c.ReadTensor(tt.name); err != nil || !slices.Equal(got, tt.data) {
			t.Fatalf("%s: %v", tt.name, err)
		}
	}
}
