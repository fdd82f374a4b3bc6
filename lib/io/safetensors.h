// Safetensors reading (memory-mapped, validated) and writing (single file or shards with an index).
// Format: little-endian u64 header size N, N bytes of JSON header, then the raw tensor bytes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors_header.h"

namespace lf {

class MappedFile;

// One validated safetensors file. Tensors returned by tensor() view the mapped file when its data
// is suitably aligned (read-only: copy before writing) and are copied otherwise.
class SafetensorsFile {
 public:
  // Throws InputError naming the file (and tensor) for every malformed case: truncated file, header
  // too large, bad JSON, unknown dtype, shape not matching the byte count, offsets out of range or
  // overlapping.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const;
  const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  bool contains(const std::string& name) const { return header_.index.count(name) > 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;
  // The parsed header and the mapped bytes of the whole file (for checks that read values).
  const SafetensorsHeader& header() const { return header_; }
  const uint8_t* data() const;
  uint64_t size() const;

 private:
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;  // parsed and validated by parse_safetensors_header
};

// All tensors of a checkpoint directory: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json`. Shards are opened once each.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open_dir(const std::string& dir);
  std::vector<std::string> names() const;
  // The files it read: the shards of the index (or the single file), each once.
  const std::vector<SafetensorsFile>& files() const { return files_; }
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  at::Tensor tensor(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const;

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Streams a safetensors file whose tensor names, dtypes and shapes are known up front (the header
// comes first), so tensors can be produced and written one at a time without holding them all.
// Written to a temporary file and renamed by finish(); dropped if finish() is never reached.
class SafetensorsStreamWriter {
 public:
  struct Spec {
    std::string name;
    c10::ScalarType dtype;
    std::vector<int64_t> shape;
  };
  SafetensorsStreamWriter(const std::string& path, const std::vector<Spec>& specs,
                          const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsStreamWriter();
  // The next tensor in spec order; its dtype and shape must match the spec.
  void write(const at::Tensor& tensor);
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes one safetensors file atomically (tensors are made contiguous CPU copies as needed).
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes `model.safetensors`, or shards of at most `max_shard_bytes` each
// (`model-00001-of-0000N.safetensors`) plus `model.safetensors.index.json`, as transformers does.
// A single tensor larger than the limit gets a shard of its own. Returns the files written.
std::vector<std::string> write_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                                                   uint64_t max_shard_bytes,
                                                   const std::map<std::string, std::string>& metadata = {});

// The same files, with tensors that do not exist all at once: `produce` is called once and hands
// each tensor of `specs`, in order, to the function it is given (dtype and shape as announced).
std::vector<std::string> write_safetensors_sharded_stream(
    const std::string& dir, const std::vector<SafetensorsStreamWriter::Spec>& specs, uint64_t max_shard_bytes,
    const std::function<void(const std::function<void(const at::Tensor&)>&)>& produce,
    const std::map<std::string, std::string>& metadata = {});

// "F32" <-> at::ScalarType; throws InputError for names it does not know. (safetensors_dtype_size is
// in io/safetensors_header.h.)
c10::ScalarType safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(c10::ScalarType type);

}  // namespace lf
