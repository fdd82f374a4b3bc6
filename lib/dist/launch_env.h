// Rank, world size and rendezvous from the launcher's environment: torchrun (`RANK`, `WORLD_SIZE`,
// `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), OpenMPI's mpirun (`OMPI_COMM_WORLD_RANK`,
// `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK`; MASTER_ADDR/PORT optional) or SLURM's srun (`SLURM_PROCID`, `SLURM_NTASKS`,
// `SLURM_LOCALID`, the first host of `SLURM_JOB_NODELIST`). Parsed from a map so it is testable;
// the application reads the process environment once and passes it in.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace lf {

struct LaunchEnv {
  std::string launcher = "single";  // single | torchrun | mpi | slurm
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  int64_t local_world_size = 1;  // ranks on this node (memory per rank = the node's / this on CPU)
  std::string master_addr;  // empty for a single process (and under mpirun without MASTER_ADDR)
  int64_t master_port = 0;
  bool agent_store = false;  // torchrun's agent serves the rendezvous store (TORCHELASTIC_USE_AGENT_STORE)
  bool mpi_wired = false;    // started by an MPI launcher (mpirun, or srun --mpi=pmix): MPI can form the world
  std::string describe() const;  // one line for the log
};

// InputError naming the variable when one is malformed or they contradict each other.
LaunchEnv parse_launch_env(const std::map<std::string, std::string>& env);

// The first host of a SLURM node list: "gpu[03-05,9],cpu1" -> "gpu03".
std::string first_slurm_host(const std::string& nodelist);

std::map<std::string, std::string> process_environment();

}  // namespace lf
