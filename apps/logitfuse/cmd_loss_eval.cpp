// `logitfuse loss-eval`: the graph terms on tensors from a safetensors file, for checking them
// against reference solvers (POT) and for measuring the approximation gap of the sorted closed form
// against entropic Gromov-Wasserstein on real activations.
//   C.<i>, D.<i>   graphs [n, n]      -> sorted_q1.<i>, sorted_q2.<i> (strength features, not
//                                         normalised), entropic.<i>
//   XS.<i>, XT.<i> top-k activations  -> gld.<i> (with the recipe's GLD options), gld_grad.<i> (d/dXS)
#include <CLI/CLI.hpp>
#include <ATen/ATen.h>

#include "commands.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "loss/gld.h"

namespace lf::app {

void add_loss_eval(CLI::App& root) {
  struct Options {
    std::string input, out, feature = "strength";
    bool normalize = true;
    int64_t p = 1;
    double epsilon = 0.005;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("loss-eval", "Evaluate the graph distillation terms on stored tensors (checks and ablations)");
  cmd->add_option("--input", opt->input, "safetensors with C.<i>/D.<i> graphs and/or XS.<i>/XT.<i> activations")->required();
  cmd->add_option("--out", opt->out, "safetensors with the results")->required();
  cmd->add_option("--feature", opt->feature, "GLD node feature: strength|self|norm")->capture_default_str();
  cmd->add_option("--normalize-features", opt->normalize, "GLD: divide features by their sum")->capture_default_str();
  cmd->add_option("--p", opt->p, "GLD exponent (1 or 2)")->capture_default_str();
  cmd->add_option("--epsilon", opt->epsilon, "entropic GW regularisation")->capture_default_str();
  cmd->callback([opt] {
    auto file = SafetensorsFile::open(opt->input);
    NamedTensors out;
    loss::GldOptions gld{opt->feature, opt->normalize, opt->p};
    loss::EntropicGwOptions entropic;
    entropic.epsilon = opt->epsilon;
    for (const auto& e : file.entries()) {
      if (e.name.rfind("C.", 0) == 0) {
        const std::string i = e.name.substr(2);
        if (!file.contains("D." + i)) throw InputError(opt->input + ": C." + i + " has no D." + i);
        at::Tensor C = file.tensor(e.name).to(at::kDouble), D = file.tensor("D." + i).to(at::kDouble);
        at::Tensor fc = loss::graph_features(C, "strength"), fd = loss::graph_features(D, "strength");
        out.emplace_back("sorted_q1." + i, loss::sorted_feature_distance(fc, fd, 1));
        out.emplace_back("sorted_q2." + i, loss::sorted_feature_distance(fc, fd, 2));
        out.emplace_back("entropic." + i, loss::entropic_gw(C, D, entropic));
      } else if (e.name.rfind("XS.", 0) == 0) {
        const std::string i = e.name.substr(3);
        if (!file.contains("XT." + i)) throw InputError(opt->input + ": XS." + i + " has no XT." + i);
        at::Tensor xs = file.tensor(e.name).to(at::kDouble).clone().requires_grad_(true);
        at::Tensor xt = file.tensor("XT." + i).to(at::kDouble);
        at::Tensor value = loss::sorted_feature_distance(loss::rank_node_features(xs, gld), loss::rank_node_features(xt, gld), gld.p);
        value.backward();
        out.emplace_back("gld." + i, value.detach());
        out.emplace_back("gld_grad." + i, xs.grad());
      }
    }
    if (out.empty()) throw InputError(opt->input + ": no C.<i>/D.<i> or XS.<i>/XT.<i> tensors");
    write_safetensors(opt->out, out);
  });
}

}  // namespace lf::app
