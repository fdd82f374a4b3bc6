// Inputs the fuzz targets (fuzz/, docs/reliability.md "Fuzzing") found crashing a parser, each now an
// InputError naming the file and field. The crashing inputs themselves are in fuzz/regressions/ and
// are replayed by scripts/fuzz.sh; these are the same cases, reduced, in the unit tests.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <string>

#include "core/error.h"
#include "model/model_config.h"
#include "sweep/expand.h"
#include "sweep/sweep_file.h"
#include "test_helpers.h"
#include "tokenizer/tokenizer.h"

using Catch::Matchers::Contains;
using json = nlohmann::json;

namespace {

json llama_config() {
  return {{"model_type", "llama"}, {"vocab_size", 64}, {"hidden_size", 16}, {"intermediate_size", 32},
          {"num_hidden_layers", 1}, {"num_attention_heads", 2}};
}

std::string config_error(const json& config) {
  return lf::test::error_text([&] { lf::parse_model_config(config.dump(), "config.json"); });
}

// A tokenizer.json with a three-token BPE vocabulary and no merges; `patch` edits it.
json tokenizer(const json& vocab, const json& added = json::array()) {
  return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
          {"normalizer", nullptr}, {"pre_tokenizer", nullptr}, {"post_processor", nullptr}, {"decoder", nullptr},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
}

std::string tokenizer_error(const json& spec) {
  lf::test::TempDir dir;
  const std::string file = dir.file("tokenizer.json", spec.dump());
  return lf::test::error_text([&] { lf::load_hf_tokenizer(file); });
}

std::string unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

}  // namespace

TEST_CASE("fuzz regression: config.json fields of the wrong type or size are input errors", "[model][fuzz]") {
  // fuzz_model_config: a number as hidden_act escaped as nlohmann's type_error (exit 1).
  json config = llama_config();
  config["hidden_act"] = 99999.0;
  CHECK_THAT(config_error(config), Contains("config.json: field 'hidden_act': expected a string"));
  // Positions that do not fit an integer were converted anyway (undefined behaviour).
  config = llama_config();
  config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"original_max_position_embeddings", 1e300}};
  CHECK_THAT(config_error(config), Contains("rope_scaling.original_max_position_embeddings"));
  config = llama_config();
  config["rope_scaling"] = {{"rope_type", "default"}, {"factor", "two"}};
  CHECK_THAT(config_error(config), Contains("field 'rope_scaling.factor': expected a number"));
}

TEST_CASE("fuzz regression: tokenizer.json ids that are not small non-negative integers are input errors", "[tokenizer][fuzz]") {
  // fuzz_tokenizer_json: a float id (8e92) was cast to int (undefined behaviour); a negative id
  // indexed the token tables out of bounds; a huge one allocated tables of that size.
  CHECK_THAT(tokenizer_error(tokenizer({{"a", 0}, {"b", 8e92}})),
             Contains("vocabulary token \"b\" has id 8e+92; ids are integers from 0 to 4194303"));
  CHECK_THAT(tokenizer_error(tokenizer({{"a", 0}, {"b", -1}})), Contains("vocabulary token \"b\" has id -1"));
  CHECK_THAT(tokenizer_error(tokenizer({{"a", 0}, {"b", 1}},
                                       {{{"id", int64_t{1} << 40}, {"content", "<s>"}, {"special", true}}})),
             Contains("added token \"<s>\" has id 1099511627776"));
  CHECK_THAT(tokenizer_error(tokenizer({{"a", 0}}, {{{"id", -3}, {"content", "<s>"}}})),
             Contains("added token \"<s>\" has id -3"));
  CHECK(tokenizer_error(tokenizer({{"a", 0}, {"b", 1}}, {{{"id", 2}, {"content", "<s>"}}})).empty());
}

TEST_CASE("fuzz regression: an unk_token missing from the vocabulary is an input error on the text that needs it", "[tokenizer][fuzz]") {
  // fuzz_tokenizer_json: the BPE model's std::invalid_argument escaped encode() (exit 1). tokenizers
  // loads such a file and fails only on a character outside the vocabulary; so do we, naming the file.
  json spec = tokenizer({{"a", 0}, {"b", 1}});
  spec["model"]["unk_token"] = "<unk>";
  lf::test::TempDir dir;
  const std::string file = dir.file("tokenizer.json", spec.dump());
  const auto tok = lf::load_hf_tokenizer(file);
  CHECK(tok->encode("ab", false).ids == std::vector<int64_t>{0, 1});
  CHECK_THAT(lf::test::error_text([&] { tok->encode("abc", false); }),
             Contains(file + ": unk_token \"<unk>\" is not in the vocabulary"));
}

TEST_CASE("fuzz regression: a SentencePiece model the library throws on is an input error", "[tokenizer][fuzz]") {
  // fuzz_sentencepiece: a model with a zero-length piece made the library throw darts' "failed to
  // insert key" past our status check (std::terminate).
  lf::test::TempDir dir;
  const std::string file = dir.file("tokenizer.model", unhex("0a0e0a053c756e6b3e150000000018020a080a014815838887c00a080a016215838887c00a080a016815838887c00a080a017715838887c00a090a02756d153fe887c00a090a0276651572b388c00a090a026572154c5389c00a090a0264651583d68ac00a0b0a04e29681631546038bc00a0b0a04e29681661522068ec00a080a0163155bed97c00a080a016d1594399dc00a080a013c1535f79dc00a080a015f1535f79dc00a080a01281542f79dc00a080a01291542f79dc00a080a01001546f79dc00a080a01231546f79dc00a080a012a1546f79dc00a080a012c1546f79dc00a080a01351546f79dc00a080a017a1546f79dc00a090a02c3a91546f79dc00a090a02c3af1546f79dc00a0a0a03e5ad971546f79dc00a0a0a03e6bca21546f79dc00a080a0176150351a3c012191801203e550000803ffa010a3c7c696d5f656e647c3e9802001a0c0a086964656e746974791200"));
  CHECK_THAT(lf::test::error_text([&] { lf::load_sentencepiece_tokenizer(file); }),
             Contains("not a SentencePiece model"));
}

TEST_CASE("fuzz regression: a sweep base whose name the file system refuses is an input error", "[sweep][fuzz]") {
  // fuzz_sweep: std::filesystem threw filesystem_error (File name too long) from is_regular_file.
  lf::test::TempDir dir;
  const std::string sweep = dir.file("sweep.yaml", "base: " + std::string(5000, 'x') + ".yaml\ngrid: {train.lr: [1.0e-5]}\n");
  CHECK_THAT(lf::test::error_text([&] { lf::load_sweep_file(sweep); }), Contains("does not exist"));
}

TEST_CASE("fuzz regression: a grid of more runs than a sweep allows is refused before expanding", "[sweep][fuzz]") {
  // fuzz_sweep: a few lines of grid asked for 10^12 runs, which expand_sweep tried to build.
  std::vector<lf::SweepAxis> axes;
  for (int a = 0; a < 12; ++a) {
    lf::SweepAxis axis;
    axis.key = "k" + std::to_string(a);
    for (int v = 0; v < 10; ++v) axis.values.push_back({axis.key, std::to_string(v), std::to_string(v)});
    axes.push_back(axis);
  }
  CHECK_THAT(lf::test::error_text([&] { lf::expand_sweep(axes, {}); }), Contains("the sweep has more than 100000 runs"));
  axes.resize(2);
  CHECK(lf::expand_sweep(axes, {}).size() == 100);
}
