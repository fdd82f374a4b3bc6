#include "dist/launch_env.h"

#include <algorithm>
#include <cstdlib>

#include "core/error.h"

extern char** environ;

namespace lf {

namespace {

int64_t integer(const std::map<std::string, std::string>& env, const std::string& name, int64_t low) {
  const std::string& text = env.at(name);
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw InputError("environment variable " + name + "='" + text + "' is not an integer");
  if (value < low) throw InputError("environment variable " + name + "=" + text + " must be >= " + std::to_string(low));
  return value;
}

const std::string* find(const std::map<std::string, std::string>& env, const std::string& name) {
  auto it = env.find(name);
  return it == env.end() || it->second.empty() ? nullptr : &it->second;
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  // Hosts are separated by commas outside brackets; a bracket holds ranges "03-05" or single ids.
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == ',' && depth == 0) break;
    if (c == '[') ++depth;
    if (c == ']') --depth;
    first.push_back(c);
  }
  const size_t open = first.find('[');
  if (open == std::string::npos) return first;
  const size_t close = first.find(']', open);
  if (close == std::string::npos) throw InputError("SLURM_JOB_NODELIST='" + nodelist + "' has an unclosed '['");
  std::string inside = first.substr(open + 1, close - open - 1);
  inside = inside.substr(0, inside.find(','));
  inside = inside.substr(0, inside.find('-'));
  return first.substr(0, open) + inside + first.substr(close + 1);
}

LaunchEnv parse_launch_env(const std::map<std::string, std::string>& env) {
  LaunchEnv out;
  if (find(env, "WORLD_SIZE") || find(env, "RANK")) {
    out.launcher = "torchrun";
    for (const char* name : {"RANK", "WORLD_SIZE"})
      if (!find(env, name)) throw InputError(std::string("environment variable ") + name + " is missing (torchrun sets RANK and WORLD_SIZE together)");
    out.world_size = integer(env, "WORLD_SIZE", 1);
    out.rank = integer(env, "RANK", 0);
    out.local_rank = find(env, "LOCAL_RANK") ? integer(env, "LOCAL_RANK", 0) : 0;
    out.local_world_size = find(env, "LOCAL_WORLD_SIZE") ? integer(env, "LOCAL_WORLD_SIZE", 1) : out.world_size;
    const std::string* agent = find(env, "TORCHELASTIC_USE_AGENT_STORE");
    out.agent_store = agent && (*agent == "True" || *agent == "true" || *agent == "1");
  } else if (find(env, "OMPI_COMM_WORLD_SIZE") || find(env, "OMPI_COMM_WORLD_RANK")) {
    // mpirun (before SLURM: mpirun inside an allocation sets both, and its own numbering is the job's).
    out.launcher = "mpi";
    for (const char* name : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"})
      if (!find(env, name)) throw InputError(std::string("environment variable ") + name + " is missing (mpirun sets OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE together)");
    out.world_size = integer(env, "OMPI_COMM_WORLD_SIZE", 1);
    out.rank = integer(env, "OMPI_COMM_WORLD_RANK", 0);
    out.local_rank = find(env, "OMPI_COMM_WORLD_LOCAL_RANK") ? integer(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0) : 0;
    out.local_world_size =
        find(env, "OMPI_COMM_WORLD_LOCAL_SIZE") ? integer(env, "OMPI_COMM_WORLD_LOCAL_SIZE", 1) : out.world_size;
  } else if (find(env, "SLURM_NTASKS") && find(env, "SLURM_PROCID")) {
    out.launcher = "slurm";
    out.world_size = integer(env, "SLURM_NTASKS", 1);
    out.rank = integer(env, "SLURM_PROCID", 0);
    out.local_rank = find(env, "SLURM_LOCALID") ? integer(env, "SLURM_LOCALID", 0) : 0;
    // "4" or "4(x2),2": the first node's count is the most a node runs.
    out.local_world_size = out.world_size;
    if (const auto* per_node = find(env, "SLURM_TASKS_PER_NODE")) {
      try {
        out.local_world_size = std::max<int64_t>(1, std::stoll(*per_node));
      } catch (const std::exception&) {
      }
    }
  }
  out.mpi_wired = out.launcher == "mpi" || find(env, "PMIX_RANK") || find(env, "PMI_RANK");
  if (out.rank >= out.world_size)
    throw InputError("rank " + std::to_string(out.rank) + " is not below the world size " + std::to_string(out.world_size));
  if (out.world_size == 1) return out;
  if (out.launcher == "mpi" && !(find(env, "MASTER_ADDR") && find(env, "MASTER_PORT")))
    return out;  // MPI wires its ranks up itself; NCCL under mpirun needs MASTER_ADDR/PORT (checked there)
  if (const auto* addr = find(env, "MASTER_ADDR")) out.master_addr = *addr;
  else if (out.launcher == "slurm") {
    const auto* nodes = find(env, "SLURM_JOB_NODELIST");
    if (!nodes) nodes = find(env, "SLURM_NODELIST");
    if (!nodes) throw InputError("SLURM_JOB_NODELIST is missing: cannot find the rendezvous host", "set MASTER_ADDR");
    out.master_addr = first_slurm_host(*nodes);
  } else {
    throw InputError("MASTER_ADDR is missing for WORLD_SIZE=" + std::to_string(out.world_size), "launch with torchrun, or set MASTER_ADDR");
  }
  if (find(env, "MASTER_PORT")) {
    out.master_port = integer(env, "MASTER_PORT", 1);
  } else if (out.launcher == "slurm" && find(env, "SLURM_JOB_ID")) {
    out.master_port = 20000 + integer(env, "SLURM_JOB_ID", 0) % 10000;  // the same on every task of a job
  } else {
    throw InputError("MASTER_PORT is missing for WORLD_SIZE=" + std::to_string(out.world_size));
  }
  if (out.master_port > 65535) throw InputError("MASTER_PORT=" + std::to_string(out.master_port) + " is not a port");
  return out;
}

std::string LaunchEnv::describe() const {
  if (world_size == 1) return "single process";
  std::string text = launcher + ": rank " + std::to_string(rank) + " of " + std::to_string(world_size) + " (local rank " +
                     std::to_string(local_rank) + ")";
  if (!master_addr.empty()) text += ", rendezvous " + master_addr + ":" + std::to_string(master_port);
  return text;
}

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    const std::string entry = *e;
    const size_t eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  return env;
}

}  // namespace lf
