// Command genshards writes a prepared dataset (docs/dataset-format.md) of a
// given number of tokens for memory and throughput measurements: the
// embedded corpus's source files (its documents of one file joined) drawn in
// a seeded shuffled order, reshuffled on every pass, until the count is
// reached. Run from the repository root:
//
//	go run ./sampling/internal/genshards -out /tmp/shards-1g -tokens 1073741824
//
// It is a maintainer's tool for docs/dataset-format.md#measurements; nothing
// depends on it.
//
// It must not be used for training data: its sets exist to measure memory
// and throughput.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"

	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/sampling/tokshard"
)

func main() {
	out := flag.String("out", "", "output directory (must not hold a dataset)")
	tokens := flag.Int64("tokens", 1<<30, "tokens to write")
	seed := flag.Uint64("seed", 1, "shuffle seed")
	flag.Parse()
	if err := run(*out, *tokens, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "genshards:", err)
		os.Exit(1)
	}
}

func run(out string, tokens int64, seed uint64) error {
	if out == "" || tokens < 1 {
		return fmt.Errorf("-out is required and -tokens must be positive")
	}
	c, err := sampling.DefaultCorpus()
	if err != nil {
		return err
	}
	var files [][]int32 // the documents of one source file, joined
	last := ""
	for _, d := range append(append([]sampling.Document(nil), c.Train...), c.Val...) {
		name := d.Name
		if i := strings.LastIndexByte(name, ':'); i >= 0 {
			name = name[:i]
		}
		if name != last || len(files) == 0 {
			files = append(files, nil)
			last = name
		}
		files[len(files)-1] = append(files[len(files)-1], d.Tokens...)
	}
	w, err := tokshard.Create(out, tokshard.WriterOptions{Vocab: sampling.Vocab})
	if err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, 0))
	for written := int64(0); written < tokens; {
		r.Shuffle(len(files), func(i, j int) { files[i], files[j] = files[j], files[i] })
		for _, f := range files {
			if written >= tokens {
				break
			}
			f = f[:min(int64(len(f)), tokens-written)]
			if err := w.WriteDoc(f); err != nil {
				w.Abort()
				return err
			}
			written += int64(len(f))
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	fmt.Printf("%s: %d documents, %d tokens\n", out, w.Docs(), w.Tokens())
	return nil
}
