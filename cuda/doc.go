// Package cuda is moetrain's binding to the NVIDIA libraries, loaded at run
// time with purego (no cgo): the CUDA driver API (libcuda.so.1: contexts,
// device memory, streams, events, PTX modules and kernel launches),
// cuBLASLt (matrix products) and NCCL (collectives between GPUs). A
// machine without the driver or a library gets an error naming what is
// missing, never a crash, so every binary builds and runs everywhere and
// only a GPU run needs the libraries.
//
// It must not know about models or kernels' meaning: package gpu builds the
// trainer's operations on top of it, and package cuda/kernels holds the
// kernels' source and PTX.
//
// Contexts: every call makes the context current on the calling OS thread
// first (goroutines move between threads), so a Context may be used from any
// goroutine, though not concurrently: the caller serialises use of one
// Context.
package cuda
