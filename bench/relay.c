/* The round trip's floor for bench:tunnel --rtt: a TUN <-> UDP relay without cryptography,
 * one blocking poll() on one thread, each packet read and sent as it is. Built by the bench
 * with gcc into a temporary directory and run inside a lab namespace (root).
 *
 *   relay TUNNAME LISTEN_IP LISTEN_PORT [PEER_IP PEER_PORT]
 * Without a peer it answers whoever sent it the last datagram (the server end). */
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what) {
  perror(what);
  exit(1);
}

int main(int argc, char **argv) {
  if (argc != 4 && argc != 6) {
    fprintf(stderr, "usage: relay TUNNAME LISTEN_IP LISTEN_PORT [PEER_IP PEER_PORT]\n");
    return 2;
  }
  int tun = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (tun < 0) die("open /dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
  if (ioctl(tun, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");

  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) die("socket");
  struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
  if (inet_pton(AF_INET, argv[2], &local.sin_addr) != 1) die("listen address");
  if (bind(sock, (struct sockaddr *)&local, sizeof local) < 0) die("bind");
  struct sockaddr_in peer = {.sin_family = AF_INET};
  int have_peer = 0;
  if (argc == 6) {
    peer.sin_port = htons(atoi(argv[5]));
    if (inet_pton(AF_INET, argv[4], &peer.sin_addr) != 1) die("peer address");
    have_peer = 1;
  }
  printf("relay %s up\n", argv[1]);
  fflush(stdout);

  static unsigned char buf[65536];
  struct pollfd fds[2] = {{.fd = tun, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) continue;
    if (fds[0].revents & POLLIN) {
      ssize_t n = read(tun, buf, sizeof buf);
      if (n > 0 && have_peer) sendto(sock, buf, n, 0, (struct sockaddr *)&peer, sizeof peer);
    }
    if (fds[1].revents & POLLIN) {
      socklen_t len = sizeof peer;
      ssize_t n = recvfrom(sock, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
      if (n > 0) {
        have_peer = 1;
        if (write(tun, buf, n) < 0) { /* the device refused it: dropped, as a link would */ }
      }
    }
  }
}
