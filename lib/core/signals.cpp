#include "core/signals.h"

#include <atomic>
#include <csignal>
#include <initializer_list>

namespace lf {

namespace {
std::atomic<int> g_stop_signal{0};
void on_signal(int signal) { g_stop_signal.store(signal); }
}  // namespace

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  for (int s : {SIGINT, SIGTERM, SIGUSR1}) sigaction(s, &action, nullptr);
}

int stop_requested() { return g_stop_signal.load(); }

}  // namespace lf
