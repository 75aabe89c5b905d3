/* cc_preload.c: LD_PRELOAD shim for bench-collectives.sh. Every TCP socket
 * the process creates gets the congestion control named by $BENCH_TCP_CC
 * (TCP_CONGESTION, before it carries a byte; accepted sockets inherit the
 * listener's), so that OpenMPI runs with the congestion control moetrain's
 * ranks use, where the system's default cannot be changed. A name the
 * kernel refuses is reported once on stderr and the socket is left as it
 * is, so a comparison never silently mixes settings (the script checks
 * stderr). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol) {
	static int (*real)(int, int, int);
	static int warned;
	if (!real)
		real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
	int fd = real(domain, type, protocol);
	const char *cc = getenv("BENCH_TCP_CC");
	if (fd >= 0 && cc && *cc && (domain == AF_INET || domain == AF_INET6) &&
	    (type & 0xff) == SOCK_STREAM) {
		if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cc, strlen(cc)) != 0 && !warned) {
			warned = 1;
			fprintf(stderr, "cc_preload: TCP_CONGESTION %s refused\n", cc);
		}
	}
	return fd;
}
