/*
 * cocoon-exec: the one step of the launcher that Node cannot do itself.
 *
 * Node has no chroot(2), setgroups(2) or execve(2) of a foreign binary into a new root, so
 * the launcher spawns this small static helper. It becomes a child subreaper (so orphaned
 * descendants of the app are reaped here and never pile up as zombies), forks, and in the
 * child enters the decrypted in-memory root, drops to the image's user and execs the
 * application. The parent forwards termination signals to the app and exits with its status.
 *
 * usage: cocoon-exec ROOT UID GID GROUPS(comma list or "-") CWD -- ARGV...
 * The environment is passed through unchanged (the launcher builds it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t app_pid = 0;

static void forward(int sig) {
  if (app_pid > 0) kill(app_pid, sig);
}

static int parse_id(const char *s, unsigned long *out) {
  char *end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || !end || *end || v > 0xfffffffeUL) return -1;
  *out = v;
  return 0;
}

static void die(const char *what) {
  fprintf(stderr, "[cocoon-exec] %s: %s\n", what, strerror(errno));
  _exit(127);
}

int main(int argc, char **argv) {
  if (argc < 8 || strcmp(argv[6], "--") != 0) {
    fprintf(stderr, "usage: cocoon-exec ROOT UID GID GROUPS CWD -- ARGV...\n");
    return 2;
  }
  const char *root = argv[1], *cwd = argv[5];
  unsigned long uid, gid;
  if (parse_id(argv[2], &uid) || parse_id(argv[3], &gid)) {
    fprintf(stderr, "[cocoon-exec] invalid uid/gid\n");
    return 2;
  }
  gid_t groups[64];
  size_t ngroups = 0;
  if (strcmp(argv[4], "-") != 0) {
    char *list = strdup(argv[4]);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
      unsigned long g;
      if (ngroups >= 64 || parse_id(tok, &g)) {
        fprintf(stderr, "[cocoon-exec] invalid group list\n");
        return 2;
      }
      groups[ngroups++] = (gid_t)g;
    }
    free(list);
  }

  /* Gramine (SGX) has no prctl(2): without a subreaper, orphans are left to the LibOS. */
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0 && errno != ENOSYS) die("prctl(PR_SET_CHILD_SUBREAPER)");

  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (chroot(root) != 0) die("chroot");
    if (chdir("/") != 0) die("chdir /");
    if (setgroups(ngroups, groups) != 0) die("setgroups");
    if (setgid((gid_t)gid) != 0) die("setgid");
    if (setuid((uid_t)uid) != 0) die("setuid");
    if (chdir(cwd) != 0) die("chdir to working directory");
    execvp(argv[7], &argv[7]);
    die("exec");
  }
  app_pid = pid;

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
  for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaction(forwarded[i], &sa, NULL);
  sigprocmask(SIG_SETMASK, &old, NULL);

  int exit_code = 0;
  for (;;) {
    int status;
    pid_t done = waitpid(-1, &status, 0);
    if (done < 0) {
      if (errno == EINTR) continue;
      break; /* ECHILD: the app and every orphan are gone */
    }
    if (done == pid) {
      exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      app_pid = 0;
      /* The app is gone: collect orphans that already exited, leave the rest to the runtime. */
      while (waitpid(-1, &status, WNOHANG) > 0) {
      }
      break;
    }
  }
  return exit_code;
}
