#include "train/run_log.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>

#include <string>

#include "core/error.h"

namespace lf {

MetricsLog::MetricsLog(const std::string& path, int64_t total_steps, int64_t first_step)
    : total_(total_steps), first_(first_step), terminal_(isatty(STDOUT_FILENO) == 1), start_(std::chrono::steady_clock::now()) {
  file_ = std::fopen(path.c_str(), "a");
  if (!file_) throw RuntimeFailure(path + ": cannot open for appending");
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write(const std::string& json_line) {
  std::fputs(json_line.c_str(), file_);
  std::fputc('\n', file_);
  std::fflush(file_);
}

void MetricsLog::progress(int64_t step, double loss, double lr) {
  if (!terminal_) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double done = static_cast<double>(step - first_);
  const double eta = done > 0 ? elapsed / done * static_cast<double>(total_ - step) : 0.0;
  const int width = 30;
  const int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
  std::string bar(filled, '=');
  bar.resize(width, ' ');
  std::printf("\r[%s] %lld/%lld loss %.4f lr %.2e ETA %02d:%02d ", bar.c_str(), static_cast<long long>(step),
              static_cast<long long>(total_), loss, lr, static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
  std::fflush(stdout);
}

void MetricsLog::finish_progress() {
  if (terminal_) std::printf("\n");
}

RunLog::RunLog(const Recipe& recipe, const Communicator& comm, int64_t total_steps, int64_t first_step) {
  if (!comm.is_main()) return;
  metrics_.emplace((std::filesystem::path(recipe.run.output_dir) / "metrics.jsonl").string(), total_steps, first_step);
  if (recipe.log.tensorboard) {
    tensorboard_.emplace((std::filesystem::path(recipe.run.output_dir) / "tensorboard").string());
    spdlog::info("TensorBoard events: {}", tensorboard_->path());
  }
}

void RunLog::write(const nlohmann::json& line) {
  if (metrics_) metrics_->write(line.dump());
  if (!tensorboard_) return;
  // Every number of the line as a scalar: train/<key>, or eval/<key> for an evaluation line.
  const std::string prefix = line.contains("eval_loss") ? "eval/" : "train/";
  std::vector<std::pair<std::string, double>> values;
  for (auto it = line.begin(); it != line.end(); ++it)
    if (it.key() != "step" && (it->is_number() || it->is_boolean()))
      values.emplace_back(prefix + it.key(), it->is_boolean() ? (it->get<bool>() ? 1.0 : 0.0) : it->get<double>());
  tensorboard_->scalars(line.at("step").get<int64_t>(), values);
}

void RunLog::progress(int64_t step, double loss, double lr) {
  if (metrics_) metrics_->progress(step, loss, lr);
}

void RunLog::finish_progress() {
  if (metrics_) metrics_->finish_progress();
}

}  // namespace lf
