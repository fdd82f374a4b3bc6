// Typed errors for logitfuse. Every failure the user can act on is one of these; `main` catches
// them once and maps them to the exit codes of the interface contract (0 ok, 1 runtime, 2 input).
#pragma once

#include <stdexcept>
#include <string>

namespace lf {

enum ExitCode : int { kExitOk = 0, kExitRuntime = 1, kExitInput = 2 };

// Base error: a one-line message naming where (file, key, line) and what, plus an optional fix-it hint.
class Error : public std::runtime_error {
 public:
  Error(int exit_code, std::string message, std::string hint = {})
      : std::runtime_error(std::move(message)), exit_code_(exit_code), hint_(std::move(hint)) {}
  int exit_code() const { return exit_code_; }
  const std::string& hint() const { return hint_; }
  // "message (hint: ...)" on one line, newlines flattened.
  std::string one_line() const;

 private:
  int exit_code_;
  std::string hint_;
};

// Bad usage, recipe, checkpoint, tokenizer or data line: exit 2.
class InputError : public Error {
 public:
  explicit InputError(std::string message, std::string hint = {})
      : Error(kExitInput, std::move(message), std::move(hint)) {}
};

// A feature of the contract that is not built yet: exit 2 with "not yet available".
class NotAvailable : public Error {
 public:
  explicit NotAvailable(const std::string& what)
      : Error(kExitInput, what + ": not yet available in this build of logitfuse") {}
};

// Something went wrong while running (I/O failure, device error): exit 1.
class RuntimeFailure : public Error {
 public:
  explicit RuntimeFailure(std::string message, std::string hint = {})
      : Error(kExitRuntime, std::move(message), std::move(hint)) {}
};

}  // namespace lf
