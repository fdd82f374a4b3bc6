#include "sweep/child_process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>

#include "core/error.h"

extern char** environ;

namespace lf {

namespace {
// Written by the signal handler: only lock-free atomics and kill(), which is async-signal-safe.
std::atomic<pid_t> g_child{0};
std::atomic<int> g_stop{0};

void forward_signal(int signal) {
  g_stop.store(signal);
  const pid_t child = g_child.load();
  if (child > 0) kill(child, signal);
}
}  // namespace

std::string self_executable() {
  std::error_code ec;
  const auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw RuntimeFailure("cannot find this executable through /proc/self/exe: " + ec.message());
  return path.string();
}

void install_sweep_signal_forwarding() {
  struct sigaction action {};
  action.sa_handler = forward_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int s : {SIGINT, SIGTERM, SIGUSR1}) sigaction(s, &action, nullptr);
}

int sweep_stop_signal() { return g_stop.load(); }

int run_child_process(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&files, STDOUT_FILENO, STDERR_FILENO);
  // The child starts with default signal dispositions; the trainer installs its own handlers.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int s : {SIGINT, SIGTERM, SIGUSR1}) sigaddset(&defaults, s);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);

  pid_t pid = 0;
  const int rc = posix_spawn(&pid, args[0], &files, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw RuntimeFailure("cannot start " + argv[0] + ": " + std::strerror(rc));
  g_child.store(pid);
  // A stop signal that came just before the child existed still reaches it.
  if (const int pending = g_stop.load()) kill(pid, pending);

  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      g_child.store(0);
      throw RuntimeFailure(std::string("waiting for the training process: ") + std::strerror(errno));
    }
  }
  g_child.store(0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace lf
