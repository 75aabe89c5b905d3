/* mpi_coll: time MPI_Allreduce and MPI_Alltoall the way `coordinator bench
 * collectives` times its own (same sizes, warmup, iterations, repetitions;
 * time = median repetition of the slowest rank's mean per-operation time).
 *
 *   mpicc -O2 -o mpi_coll mpi_coll.c
 *   mpirun -np N ./mpi_coll OPS SIZES ITERS WARMUP REPS
 *     OPS: comma list of allreduce,alltoall   SIZES: comma list of bytes
 * Output, one line per (op, size): op bytes time_us algbw_GBps busbw_GBps wrong
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static float pat(int rank, long i) { return (float)((i * 7 + rank * 13) % 1000) - 300.0f; }

static void run(const char *op, long bytes, int iters, int warmup, int reps, int rank, int n) {
  long count = bytes / 4;
  int a2a = strcmp(op, "alltoall") == 0;
  if (a2a) count = count / n * n;
  float *send = malloc((count > 0 ? count : 1) * sizeof(float));
  float *recv = malloc((count > 0 ? count : 1) * sizeof(float));
  long m = a2a ? count / n : 0;
  /* one checked run */
  for (long i = 0; i < count; i++) send[i] = pat(rank, i);
  if (a2a) MPI_Alltoall(send, (int)m, MPI_FLOAT, recv, (int)m, MPI_FLOAT, MPI_COMM_WORLD);
  else MPI_Allreduce(MPI_IN_PLACE, send, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  long wrong = 0;
  for (long i = 0; i < count; i++) {
    float want;
    if (a2a) {
      want = pat((int)(i / m), rank * m + i % m);
      if (recv[i] != want) wrong++;
    } else {
      want = 0;
      for (int q = 0; q < n; q++) want += pat(q, i);
      if (send[i] != want) wrong++;
    }
  }
  long wsum = 0;
  MPI_Allreduce(&wrong, &wsum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  memset(send, 0, count * sizeof(float));
  for (int w = 0; w < warmup; w++) {
    if (a2a) MPI_Alltoall(send, (int)m, MPI_FLOAT, recv, (int)m, MPI_FLOAT, MPI_COMM_WORLD);
    else MPI_Allreduce(MPI_IN_PLACE, send, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
  double *times = malloc(reps * sizeof(double));
  for (int r = 0; r < reps; r++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int it = 0; it < iters; it++) {
      if (a2a) MPI_Alltoall(send, (int)m, MPI_FLOAT, recv, (int)m, MPI_FLOAT, MPI_COMM_WORLD);
      else MPI_Allreduce(MPI_IN_PLACE, send, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    double dt = (MPI_Wtime() - t0) / iters, mx;
    MPI_Allreduce(&dt, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    times[r] = mx;
  }
  qsort(times, reps, sizeof(double), cmp);
  double med = reps % 2 ? times[reps / 2] : (times[reps / 2 - 1] + times[reps / 2]) / 2;
  double alg = (double)(count * 4) / med / 1e9;
  double factor = a2a ? (double)(n - 1) / n : 2.0 * (n - 1) / n;
  if (rank == 0) printf("%s %ld %.1f %.3f %.3f %ld\n", op, count * 4, med * 1e6, alg, alg * factor, wsum);
  fflush(stdout);
  free(times);
  free(send);
  free(recv);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, n;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  if (argc != 6) {
    if (rank == 0) fprintf(stderr, "usage: mpi_coll OPS SIZES ITERS WARMUP REPS\n");
    MPI_Finalize();
    return 2;
  }
  int iters = atoi(argv[3]), warmup = atoi(argv[4]), reps = atoi(argv[5]);
  char *ops = strdup(argv[1]);
  for (char *op = strtok(ops, ","); op; op = strtok(NULL, ",")) {
    char *sizes = strdup(argv[2]), *save = NULL;
    for (char *s = strtok_r(sizes, ",", &save); s; s = strtok_r(NULL, ",", &save))
      run(op, atol(s), iters, warmup, reps, rank, n);
    free(sizes);
  }
  MPI_Finalize();
  return 0;
}
