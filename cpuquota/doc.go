// Package cpuquota limits a group of processes to a number of CPUs with a
// Linux cgroup (v1 or v2) and CFS bandwidth control: New creates the group
// under this process's own cpu cgroup, Add moves a process into it, Stat
// reads its throttling counts, Close removes it. Off Linux every constructor
// fails with an *UnavailableError.
//
// It must not pin processes to CPUs, start or wait for processes, or know
// what runs in the group (benchmarks, ranks, training): callers own the
// processes and their lifetimes. It must not touch cgroups other than the
// ones it created, and Close must not report success while its group remains.
package cpuquota
