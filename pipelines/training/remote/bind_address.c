/* Bind shim of the tf-mwms training process (LD_PRELOAD; bootstrap.sh builds it into <environment>/lib).

   TensorFlow's gRPC server binds the wildcard address ("0.0.0.0:" / "[::]:" in grpc_server_lib, no option to
   change it). With PIPELINE_BIND_ADDRESS naming an IPv4 or IPv6 address, a bind() of this process to a wildcard
   address binds that address instead: IPv4 0.0.0.0 becomes the IPv4 address; IPv6 :: becomes the IPv6 address, or
   ::ffff:<the IPv4 address> on a dual-stack socket. A wildcard bind that cannot be mapped (an IPv4 socket with an
   IPv6 address named, or a name that is not an address) fails with EADDRNOTAVAIL rather than listen everywhere.
   Other binds, and every bind without the variable, are left alone. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static bind_fn real_bind;
  if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
  const char *want = getenv("PIPELINE_BIND_ADDRESS");
  if (!want || !*want || !addr) return real_bind(fd, addr, len);
  struct in_addr v4;
  struct in6_addr v6;
  int is4 = inet_pton(AF_INET, want, &v4) == 1;
  int is6 = !is4 && inet_pton(AF_INET6, want, &v6) == 1;

  if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in a;
    memcpy(&a, addr, sizeof a);
    if (a.sin_addr.s_addr != htonl(INADDR_ANY)) return real_bind(fd, addr, len);
    if (!is4) { errno = EADDRNOTAVAIL; return -1; }
    a.sin_addr = v4;
    return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
  }
  if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 a;
    memcpy(&a, addr, sizeof a);
    if (!IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) return real_bind(fd, addr, len);
    if (is6) {
      a.sin6_addr = v6;
    } else if (is4) {
      int off = 0;  /* a v4-mapped address needs a dual-stack socket */
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
      memset(&a.sin6_addr, 0, sizeof a.sin6_addr);
      a.sin6_addr.s6_addr[10] = 0xff;
      a.sin6_addr.s6_addr[11] = 0xff;
      memcpy(&a.sin6_addr.s6_addr[12], &v4, sizeof v4);
    } else {
      errno = EADDRNOTAVAIL;
      return -1;
    }
    return real_bind(fd, (const struct sockaddr *)&a, sizeof a);
  }
  return real_bind(fd, addr, len);
}
