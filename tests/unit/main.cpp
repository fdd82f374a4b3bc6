// The unit tests' main: Catch2's, plus a crash report. Catch2 reports a fatal signal with the test's
// name, then restores the handlers that were there before and raises it again; the handler below is
// that earlier one, and prints the stack (shared-library frames by name; the test binary's own by
// name too, since it is linked with -rdynamic) before the process dies as it would have. It exists
// for crashes seen only on another machine, where a debugger may not be at hand.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <csignal>
#include <cstring>
#include <execinfo.h>
#include <unistd.h>

namespace {

void print_stack_and_die(int signal_number) {
  const char* title = "\n=== fatal signal: stack (most recent call first) ===\n";
  (void)!write(STDERR_FILENO, title, std::strlen(title));
  void* frames[64];
  const int count = backtrace(frames, 64);
  backtrace_symbols_fd(frames, count, STDERR_FILENO);
  std::signal(signal_number, SIG_DFL);
  std::raise(signal_number);
}

}  // namespace

int main(int argc, char* argv[]) {
  for (int signal_number : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) std::signal(signal_number, print_stack_and_die);
  return Catch::Session().run(argc, argv);
}
