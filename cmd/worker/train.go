package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/moetrain/moetrain/train"
)

type trainFlags struct {
	standalone bool
	config     string
	data       string
	steps      int
	threads    int
	seed       uint64
	device     string
	precision  string
	profileGPU bool
	jsonLogs   bool
	summary    string
	printCfg   bool
	ckptDir    string
	ckptEvery  int
	ckptKeep   int
	resume     string
}

func newTrainCmd() *cobra.Command {
	var f trainFlags
	cmd := &cobra.Command{
		Use:   "train --standalone [--config job.toml] [--data PATH] [--steps N] [--threads N] [--seed N] [--device cpu|cuda] [--precision fp32|bf16]",
		Short: "Train a model in this process (standalone, no coordinator)",
		Long: `Train the MoE model single-process on the embedded corpus or your data, with a live
progress line (step, loss, tokens/s, ETA), periodic validation loss and structured logs.

The job file has sections [model], [optim], [data], [mesh], [dp], [train]; keys it leaves
out keep their defaults (the reference model). Flags override the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTrain(cmd, f) },
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.standalone, "standalone", false, "train in this process without a coordinator (required)")
	fl.StringVar(&f.config, "config", "", "job TOML file (default: built-in reference job)")
	fl.StringVar(&f.data, "data", "", `training data: text file, directory or .jsonl (overrides data.path; "embedded" = built-in corpus)`)
	fl.IntVar(&f.steps, "steps", 0, "optimizer steps (overrides train.steps)")
	fl.IntVar(&f.threads, "threads", 0, "kernel threads (overrides train.threads; 0 = all cores)")
	fl.Uint64Var(&f.seed, "seed", 0, "random seed for weights and data order (overrides train.seed)")
	fl.StringVar(&f.device, "device", "", "cpu or cuda (overrides train.device)")
	fl.StringVar(&f.precision, "precision", "", "fp32 or bf16, bf16 on cuda only (overrides train.precision)")
	fl.BoolVar(&f.profileGPU, "profile-gpu", false, "on cuda, time the device work by kernel family after 3 warm-up steps and log it at the end")
	fl.BoolVar(&f.jsonLogs, "json-logs", false, "write logs as JSON lines instead of console text")
	fl.StringVar(&f.summary, "summary", "", "write the run summary (loss curves) as JSON to this file")
	fl.BoolVar(&f.printCfg, "print-config", false, "print the effective job configuration as TOML and exit")
	fl.StringVar(&f.ckptDir, "checkpoint-dir", "", "checkpoint directory (step-N subdirectories); empty = no checkpoints")
	fl.IntVar(&f.ckptEvery, "checkpoint-every", 0, "save every N steps and after the last (0 = after the last only)")
	fl.IntVar(&f.ckptKeep, "checkpoint-keep", 3, "keep the newest N checkpoints (0 = all)")
	fl.StringVar(&f.resume, "resume", "", `resume from "latest" or STEP (in --checkpoint-dir) or a checkpoint PATH`)
	return cmd
}

func runTrain(cmd *cobra.Command, f trainFlags) error {
	if !f.standalone {
		return errors.New("train needs --standalone; to join a coordinator's job run `worker --join ADDRESS` instead")
	}
	cfg := train.DefaultJobConfig()
	if f.config != "" {
		var err error
		if cfg, err = train.LoadJobConfig(f.config); err != nil {
			return err
		}
	}
	fl := cmd.Flags()
	if fl.Changed("data") {
		cfg.Data.Path = f.data
	}
	if fl.Changed("steps") {
		if f.steps < 1 {
			return fmt.Errorf("--steps %d: must be at least 1", f.steps)
		}
		cfg.Train.Steps = f.steps
	}
	if fl.Changed("threads") {
		if f.threads < 0 {
			return fmt.Errorf("--threads %d: must be >= 0 (0 = all cores)", f.threads)
		}
		cfg.Train.Threads = f.threads
	}
	if fl.Changed("seed") {
		cfg.Train.Seed = f.seed
	}
	if fl.Changed("device") {
		cfg.Train.Device = f.device // checked by cfg.Validate
	}
	if fl.Changed("precision") {
		cfg.Train.Precision = f.precision
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if f.ckptEvery < 0 {
		return fmt.Errorf("--checkpoint-every %d: must be >= 0", f.ckptEvery)
	}
	if f.ckptKeep < 0 {
		return fmt.Errorf("--checkpoint-keep %d: must be >= 0", f.ckptKeep)
	}
	if (fl.Changed("checkpoint-every") || fl.Changed("checkpoint-keep")) && f.ckptDir == "" {
		return errors.New("--checkpoint-every and --checkpoint-keep need --checkpoint-dir")
	}
	if f.printCfg {
		return toml.NewEncoder(cmd.OutOrStdout()).Encode(cfg)
	}

	stderr := cmd.ErrOrStderr()
	tty := false
	if file, ok := stderr.(*os.File); ok {
		tty = term.IsTerminal(int(file.Fd()))
	}
	line := &progressLine{w: stderr, live: tty}
	var logOut io.Writer = line
	if !f.jsonLogs {
		logOut = zerolog.ConsoleWriter{Out: line, TimeFormat: time.TimeOnly, NoColor: !tty}
	}
	log := zerolog.New(logOut).Level(zerolog.InfoLevel).With().Timestamp().Logger()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := train.Run(ctx, cfg, train.RunOptions{
		Log: log, OnProgress: line.update, ProfileGPU: f.profileGPU,
		Checkpoint: train.CheckpointOptions{Dir: f.ckptDir, Every: f.ckptEvery, Keep: f.ckptKeep, Resume: f.resume},
	})
	line.finish()
	if f.summary != "" && sum.Steps > 0 {
		data, jerr := json.MarshalIndent(sum, "", "  ")
		if jerr == nil {
			jerr = os.WriteFile(f.summary, data, 0o644)
		}
		if jerr != nil {
			return errors.Join(err, fmt.Errorf("write summary %s: %w", f.summary, jerr))
		}
	}
	return err
}

// progressLine keeps one live status line at the bottom of a terminal: log
// lines written through it clear the status line first and redraw it after.
// Without a terminal it only passes logs through.
type progressLine struct {
	mu   sync.Mutex
	w    io.Writer
	live bool
	text string
}

func (p *progressLine) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live && p.text != "" {
		fmt.Fprint(p.w, "\r\033[K")
	}
	n, err := p.w.Write(b)
	if p.live && p.text != "" {
		fmt.Fprint(p.w, p.text)
	}
	return n, err
}

func (p *progressLine) update(pr train.Progress) {
	if !p.live {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.text = fmt.Sprintf("step %d/%d  loss %.4f  %.0f tok/s  ETA %s", pr.Step, pr.Steps, pr.Loss, pr.TokensPerSec, pr.ETA.Round(time.Second))
	fmt.Fprint(p.w, "\r\033[K"+p.text)
}

func (p *progressLine) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live && p.text != "" {
		fmt.Fprintln(p.w)
		p.text = ""
	}
}

func init() { rootCmd.AddCommand(newTrainCmd()) }
