// Files: memory mapping, whole-file reads, and writes that never leave a half-written file behind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace lf {

// A read-only memory map of a whole file. Shared so that tensors viewing it keep it alive.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

std::string read_text_file(const std::string& path);

// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync the folder.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Streams into a temporary file beside `path` (`path.tmp.<pid>.<n>`, unique to this writer, so
// concurrent writers of one path never collide); commit() fsyncs and renames into place. If destroyed without
// commit() the temporary file is removed, so a failure never leaves a partial file under `path`.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  void write(const void* data, size_t size);
  void commit();

 private:
  std::string path_, tmp_path_;
  int fd_ = -1;
};

void fsync_directory(const std::string& dir);

// Builds the directory `target` through `fill(staging)`, a folder beside it, then renames it into
// place, so a reader sees the whole directory or none. `target` must not exist or be empty
// (InputError naming it, with `what` in the hint: "--out", "output directory"); if `fill` throws, the
// staging folder is removed and the exception goes on.
// Removes what atomic writers left in `dir` (not recursively) when their process was killed: entries
// named `X.tmp-PID...` (directories) or `X.tmp.PID.N` (files) whose PID is no longer running on this
// host. Returns how many it removed. Entries of live processes are kept (a concurrent writer).
int remove_stale_staging(const std::string& dir);

void write_directory_atomic(const std::string& target, const std::function<void(const std::string& staging)>& fill,
                            const std::string& what = "output directory");

}  // namespace lf
