#include "io/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <cctype>
#include <csignal>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace lf {

namespace {
std::string errno_text() { return std::strerror(errno); }
}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(path + ": cannot open: " + errno_text());
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw InputError(path + ": cannot stat: " + errno_text());
  }
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ > 0) {
    void* mapped = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      ::close(fd);
      throw RuntimeFailure(path + ": mmap failed: " + errno_text());
    }
    file->data_ = static_cast<uint8_t*>(mapped);
  }
  ::close(fd);  // the mapping stays valid after close
  return file;
}

MappedFile::~MappedFile() {
  if (data_) munmap(data_, size_);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open for reading");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some file systems do not allow opening directories
  ::fsync(fd);
  ::close(fd);
}

namespace {
// A temporary name of its own per writer: runs that share a cache directory (parallel seeds, a
// sweep's array jobs) may write the same file at once, and a shared ".tmp" would be renamed away
// under the other writer's feet.
std::string unique_tmp_path(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
}
}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)), tmp_path_(unique_tmp_path(path_)) {
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw RuntimeFailure(tmp_path_ + ": cannot create: " + errno_text());
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());
  }
}

void AtomicFileWriter::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ENOSPC || errno == EDQUOT)
        throw RuntimeFailure(path_ + ": " + errno_text() + " (" + std::to_string(size) +
                                 " more bytes of this file to write); the previous version, if any, is untouched",
                             "free space on that file system (or move the output there), then resume");
      throw RuntimeFailure(tmp_path_ + ": write failed: " + errno_text());
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  if (::fsync(fd_) != 0) throw RuntimeFailure(tmp_path_ + ": fsync failed: " + errno_text());
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    ::unlink(tmp_path_.c_str());
    throw RuntimeFailure(path_ + ": rename failed: " + errno_text());
  }
  fsync_directory(std::filesystem::path(path_).parent_path().string());
}

void write_directory_atomic(const std::string& dir, const std::function<void(const std::string& staging)>& fill,
                            const std::string& what) {
  namespace fs = std::filesystem;
  const fs::path target(dir);
  if (fs::exists(target) && !(fs::is_directory(target) && fs::is_empty(target)))
    throw InputError(dir + ": already exists and is not empty", "choose another " + what + " or remove it");
  if (!target.parent_path().empty()) fs::create_directories(target.parent_path());
  const fs::path staging = target.string() + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(staging);
  fs::create_directories(staging);
  try {
    fill(staging.string());
    fsync_directory(staging.string());
    if (fs::exists(target)) fs::remove(target);  // an empty directory
    fs::rename(staging, target);
    fsync_directory(target.parent_path().string());
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
}

int remove_stale_staging(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(dir, error)) return 0;
  int removed = 0;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    size_t at = name.find(".tmp-");
    if (at == std::string::npos) at = name.find(".tmp.");
    if (at == std::string::npos) continue;
    size_t end = at + 5;
    while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
    if (end == at + 5) continue;
    const long pid = std::stol(name.substr(at + 5, end - at - 5));
    if (pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to tell
    fs::remove_all(entry.path(), error);
    if (!error) ++removed;
  }
  return removed;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes.data(), bytes.size());
  writer.commit();
}

}  // namespace lf
