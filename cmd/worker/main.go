// Command worker runs moetrain training: standalone (`worker train
// --standalone`) or as a member of a coordinator's job.
//
// Each subcommand lives in its own file and registers itself on rootCmd in an
// init function; a subcommand is registered only once it works.
//
// It must not hold library code: it parses flags and wires packages.
package main

import "github.com/moetrain/moetrain/internal/cli"

var rootCmd = cli.Root("worker", "moetrain worker: train standalone or join a coordinator's job")

func main() { cli.Main(rootCmd) }
