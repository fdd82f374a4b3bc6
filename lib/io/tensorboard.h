// TensorBoard event files (`events.out.tfevents.*`), written without TensorFlow: each record is
// its length (u64 little-endian), the masked CRC32C of the length, the bytes of a protobuf `Event`,
// and their masked CRC32C. Events carry scalar summaries (tag, float value) at a step; the first
// one names the format version. Appended and flushed per event, so a killed run keeps what it wrote.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace lf {

class TensorBoardWriter {
 public:
  // Creates `dir` and a new event file in it (named as TensorFlow names them).
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One event at `step` with a scalar per (tag, value).
  void scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& event);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// CRC-32C (Castagnoli), as TFRecord frames use it (before masking).
uint32_t crc32c(const void* data, size_t size);

}  // namespace lf
