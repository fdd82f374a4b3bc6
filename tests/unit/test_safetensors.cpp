#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <thread>

#include "core/error.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "io/tensorboard.h"
#include "test_helpers.h"

using Catch::Matchers::Contains;

namespace {

// A safetensors file from a header text and a data section, for malformed cases.
std::string craft(const std::string& header, size_t data_bytes, uint64_t declared_size = UINT64_MAX) {
  const uint64_t n = declared_size == UINT64_MAX ? header.size() : declared_size;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

std::string open_error(const std::string& path) {
  try {
    lf::SafetensorsFile::open(path);
  } catch (const lf::InputError& e) {
    return e.one_line();
  }
  FAIL("expected an InputError for " << path);
  return {};
}

}  // namespace

TEST_CASE("safetensors: round trip of every common dtype", "[safetensors]") {
  lf::test::TempDir dir;
  lf::NamedTensors tensors = {
      {"a", at::randn({3, 5})},
      {"b", at::randn({7}).to(at::kBFloat16)},
      {"c", at::arange(10, at::kLong).reshape({2, 5})},
      {"d", at::randn({2, 2, 2}).to(at::kHalf)},
      {"empty", at::empty({0, 4})},
      {"scalar", at::scalar_tensor(3.5)},
  };
  const auto path = dir / "t.safetensors";
  lf::write_safetensors(path, tensors, {{"format", "pt"}});
  auto file = lf::SafetensorsFile::open(path);
  CHECK(file.metadata().at("format") == "pt");
  REQUIRE(file.entries().size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    at::Tensor back = file.tensor(name);
    CHECK(back.scalar_type() == t.scalar_type());
    CHECK(back.sizes() == t.sizes());
    CHECK(at::equal(back, t));
  }
  // Nothing but the file itself is left in the directory (no temporary file).
  int64_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path)) ++entries;
  CHECK(entries == 1);
}

TEST_CASE("safetensors: sharded checkpoints with an index", "[safetensors]") {
  lf::test::TempDir dir;
  lf::NamedTensors tensors;
  for (int i = 0; i < 6; ++i) tensors.emplace_back("w" + std::to_string(i), at::randn({16, 16}));  // 1 KiB each
  auto files = lf::write_safetensors_sharded(dir.path.string(), tensors, 2500);
  CHECK(files.size() == 4);  // 3 shards of two tensors + the index
  CHECK(std::filesystem::exists(dir / "model-00001-of-00003.safetensors"));
  auto checkpoint = lf::SafetensorsCheckpoint::open_dir(dir.path.string());
  CHECK(checkpoint.names().size() == 6);
  for (const auto& [name, t] : tensors) CHECK(at::equal(checkpoint.tensor(name), t));

  lf::test::TempDir single;
  lf::write_safetensors_sharded(single.path.string(), tensors, 1 << 20);
  CHECK(std::filesystem::exists(single / "model.safetensors"));
  CHECK_FALSE(std::filesystem::exists(single / "model.safetensors.index.json"));
}

TEST_CASE("safetensors: streamed shards are the files the in-memory writer makes", "[safetensors]") {
  // ZeRO-3 writes a model one gathered unit at a time through the streaming writer.
  lf::NamedTensors tensors;
  std::vector<lf::SafetensorsStreamWriter::Spec> specs;
  for (int i = 0; i < 5; ++i) {
    tensors.emplace_back("w" + std::to_string(i), at::randn({16, 16 + i}));
    specs.push_back({tensors.back().first, at::kFloat, tensors.back().second.sizes().vec()});
  }
  for (uint64_t limit : {uint64_t{2500}, uint64_t{1} << 20}) {
    lf::test::TempDir memory, streamed;
    const auto a = lf::write_safetensors_sharded(memory.path.string(), tensors, limit, {{"format", "pt"}});
    const auto b = lf::write_safetensors_sharded_stream(
        streamed.path.string(), specs, limit,
        [&](const std::function<void(const at::Tensor&)>& write) {
          for (const auto& [name, t] : tensors) write(t);
        },
        {{"format", "pt"}});
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(std::filesystem::path(a[i]).filename() == std::filesystem::path(b[i]).filename());
      CHECK(lf::read_text_file(a[i]) == lf::read_text_file(b[i]));  // byte for byte, the index too
    }
  }
  lf::test::TempDir short_of_one;
  CHECK_THROWS_AS(lf::write_safetensors_sharded_stream(
                      short_of_one.path.string(), specs, 2500,
                      [&](const std::function<void(const at::Tensor&)>& write) { write(tensors[0].second); }),
                  lf::RuntimeFailure);
}

TEST_CASE("safetensors: malformed files are input errors naming file and tensor", "[safetensors]") {
  lf::test::TempDir dir;
  const std::string good = R"({"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  CHECK_NOTHROW(lf::SafetensorsFile::open(dir.file("good.st", craft(good, 16))));

  CHECK_THAT(open_error(dir.file("tiny.st", "abc")), Contains("tiny.st") && Contains("truncated"));
  CHECK_THAT(open_error(dir.file("short.st", craft(good, 16, 5000))), Contains("truncated"));
  CHECK_THAT(open_error(dir.file("huge.st", craft(good, 16, 1ull << 40))), Contains("too large"));
  CHECK_THAT(open_error(dir.file("json.st", craft("{not json", 0))), Contains("not valid JSON"));
  CHECK_THAT(open_error(dir.file("data.st", craft(good, 8))), Contains("tensor 'x'") && Contains("out of range"));
  CHECK_THAT(open_error(dir.file("dtype.st", craft(R"({"x":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8))),
             Contains("tensor 'x'") && Contains("unknown dtype 'F33'"));
  CHECK_THAT(open_error(dir.file("shape.st", craft(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8))),
             Contains("tensor 'x'") && Contains("need 12 bytes"));
  CHECK_THAT(open_error(dir.file("neg.st", craft(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8))),
             Contains("negative"));
  CHECK_THAT(open_error(dir.file("order.st", craft(R"({"x":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}})", 8))),
             Contains("begin > end"));
  CHECK_THAT(open_error(dir.file("overlap.st",
                                 craft(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                       R"("y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                       12))),
             Contains("'x' and 'y' overlap"));
  CHECK_THAT(open_error(dir.file("meta.st", craft(R"({"__metadata__":{"a":1}})", 0))), Contains("__metadata__.a"));
  CHECK_THAT(open_error(dir / "missing.st"), Contains("cannot open"));
}

TEST_CASE("safetensors: index pointing at a shard that lacks the tensor", "[safetensors]") {
  lf::test::TempDir dir;
  lf::write_safetensors(dir / "model-00001-of-00001.safetensors", {{"a", at::ones({2})}});
  dir.file("model.safetensors.index.json", R"({"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}})");
  try {
    lf::SafetensorsCheckpoint::open_dir(dir.path.string());
    FAIL("expected an error");
  } catch (const lf::InputError& e) {
    CHECK_THAT(e.one_line(), Contains("'b'"));
  }
}

TEST_CASE("io: concurrent atomic writers of one path never collide", "[io]") {
  // Runs sharing a cache directory write the same vocabulary map at once; each writer has its own
  // temporary file, so every commit succeeds and the file is always one writer's whole content.
  lf::test::TempDir dir;
  const std::string path = (dir.path / "shared.bin").string();
  const std::string a(4096, 'a'), b(8192, 'b');
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (const std::string* content : {&a, &b, &a, &b})
    writers.emplace_back([&, content] {
      for (int i = 0; i < 25; ++i) {
        try {
          lf::write_file_atomic(path, *content);
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  for (auto& w : writers) w.join();
  CHECK(failures == 0);
  const std::string back = lf::read_text_file(path);
  CHECK((back == a || back == b));
  int64_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path)) ++entries;
  CHECK(entries == 1);
}

TEST_CASE("io: unfinished writes of killed processes are removed, a live writer's kept", "[io]") {
  lf::test::TempDir dir;
  const std::string alive = std::to_string(::getpid()), dead = "4194305";  // above any pid_max
  for (const std::string& name : {"step_000002.tmp-" + dead, "final.tmp-" + dead, "metrics.jsonl.tmp." + dead + ".0"})
    std::filesystem::create_directories(dir / name);
  for (const std::string& name : std::vector<std::string>{"step_000004.tmp-" + alive, "step_000006", "notes.tmp"})
    std::filesystem::create_directories(dir / name);
  CHECK(lf::remove_stale_staging(dir.path.string()) == 3);
  CHECK(std::filesystem::exists(dir / ("step_000004.tmp-" + alive)));
  CHECK(std::filesystem::exists(dir / "step_000006"));
  CHECK(std::filesystem::exists(dir / "notes.tmp"));
  CHECK_FALSE(std::filesystem::exists(dir / ("final.tmp-" + dead)));
}

TEST_CASE("tensorboard: CRC-32C of the TFRecord frames", "[io]") {
  // The check value of CRC-32C (Castagnoli) and the RFC 3720 test vectors.
  CHECK(lf::crc32c("123456789", 9) == 0xe3069283u);
  const std::vector<uint8_t> zeros(32, 0), ones(32, 0xff);
  CHECK(lf::crc32c(zeros.data(), zeros.size()) == 0x8a9136aau);
  CHECK(lf::crc32c(ones.data(), ones.size()) == 0x62a8ab43u);
}
