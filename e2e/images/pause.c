/* The empty image's program (and the rig's pod sandbox): sleeps until SIGTERM
 * or SIGINT, reaps any child it inherits as pid 1, ignores its arguments (both
 * agent slots get the same args), uses no CPU and a few pages of memory.
 * Built static so the image holds one file: gcc -static -O2 -o pause pause.c */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = quit;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) pause();
}
