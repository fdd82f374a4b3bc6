#include <catch2/catch.hpp>

#include "core/error.h"
#include "dist/launch_env.h"
#include "test_helpers.h"

using Catch::Matchers::Contains;

TEST_CASE("launch: torchrun and SLURM environments", "[dist]") {
  CHECK(lf::parse_launch_env({}).world_size == 1);
  CHECK(lf::parse_launch_env({{"HOME", "/x"}}).describe() == "single process");

  auto t = lf::parse_launch_env({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "3"},
                                 {"MASTER_ADDR", "10.1.2.3"}, {"MASTER_PORT", "29500"}});
  CHECK(t.launcher == "torchrun");
  CHECK(t.rank == 3);
  CHECK(t.world_size == 8);
  CHECK(t.local_rank == 3);
  CHECK(t.master_addr == "10.1.2.3");
  CHECK(t.master_port == 29500);
  CHECK(t.describe() == "torchrun: rank 3 of 8 (local rank 3), rendezvous 10.1.2.3:29500");
  CHECK_FALSE(t.agent_store);
  CHECK_FALSE(t.mpi_wired);  // torchrun cannot start MPI ranks
  // torchrun's agent serves the store; the workers connect as clients.
  CHECK(lf::parse_launch_env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"},
                              {"TORCHELASTIC_USE_AGENT_STORE", "True"}}).agent_store);

  auto s = lf::parse_launch_env({{"SLURM_PROCID", "9"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "1"},
                                 {"SLURM_JOB_NODELIST", "gpu[07-08],login1"}, {"SLURM_JOB_ID", "123456"}});
  CHECK(s.launcher == "slurm");
  CHECK(s.rank == 9);
  CHECK(s.local_rank == 1);
  CHECK(s.master_addr == "gpu07");
  CHECK(s.master_port == 23456);
  CHECK_FALSE(s.mpi_wired);
  // srun --mpi=pmix: MPI can form the world from PMIx.
  CHECK(lf::parse_launch_env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n1"}, {"SLURM_JOB_ID", "1"},
                              {"PMIX_RANK", "0"}}).mpi_wired);
  // An explicit MASTER_ADDR/PORT wins over the node list.
  auto s2 = lf::parse_launch_env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"MASTER_ADDR", "head"}, {"MASTER_PORT", "1234"}});
  CHECK(s2.master_addr == "head");
  CHECK(s2.master_port == 1234);
  // torchrun's variables win over SLURM's when both are set (torchrun under an allocation).
  CHECK(lf::parse_launch_env({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "6"}}).launcher == "torchrun");
}

TEST_CASE("launch: mpirun environments", "[dist]") {
  auto m = lf::parse_launch_env({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "3"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}});
  CHECK(m.launcher == "mpi");
  CHECK(m.rank == 2);
  CHECK(m.world_size == 3);
  CHECK(m.local_rank == 2);
  CHECK(m.master_addr.empty());  // MPI wires its ranks up without a rendezvous address
  CHECK(m.describe() == "mpi: rank 2 of 3 (local rank 2)");
  CHECK(m.mpi_wired);
  // With MASTER_ADDR/PORT (for NCCL under mpirun) they are kept.
  auto n = lf::parse_launch_env({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "29500"}});
  CHECK(n.describe() == "mpi: rank 0 of 2 (local rank 0), rendezvous h:29500");
  // mpirun inside a SLURM allocation: MPI's numbering wins; torchrun's still wins over both.
  auto s = lf::parse_launch_env({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}});
  CHECK(s.launcher == "mpi");
  CHECK(s.world_size == 4);
  CHECK(lf::parse_launch_env({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}}).launcher == "torchrun");
  CHECK_THAT(lf::test::error_text([] { lf::parse_launch_env({{"OMPI_COMM_WORLD_RANK", "0"}}); }),
             Contains("OMPI_COMM_WORLD_SIZE is missing"));
  CHECK_THAT(lf::test::error_text([] { lf::parse_launch_env({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "3"}}); }),
             Contains("rank 3 is not below the world size 3"));
}

TEST_CASE("launch: SLURM node lists", "[dist]") {
  CHECK(lf::first_slurm_host("node01") == "node01");
  CHECK(lf::first_slurm_host("a,b,c") == "a");
  CHECK(lf::first_slurm_host("gpu-[3,5-9]") == "gpu-3");
  CHECK(lf::first_slurm_host("rack[1-2]-n[01-04],x") == "rack1-n[01-04]");
  CHECK_THROWS_AS(lf::first_slurm_host("node[01-04"), lf::InputError);
}

TEST_CASE("launch: malformed or contradictory environments name the variable", "[dist]") {
  auto error = [](std::map<std::string, std::string> env) {
    return lf::test::error_text([&] { lf::parse_launch_env(env); });
  };
  CHECK_THAT(error({{"RANK", "x"}, {"WORLD_SIZE", "2"}}), Contains("RANK='x' is not an integer"));
  CHECK_THAT(error({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
             Contains("rank 2 is not below the world size 2"));
  CHECK_THAT(error({{"WORLD_SIZE", "2"}}), Contains("RANK is missing"));
  CHECK_THAT(error({{"RANK", "0"}, {"WORLD_SIZE", "2"}}), Contains("MASTER_ADDR is missing"));
  CHECK_THAT(error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}), Contains("MASTER_PORT is missing"));
  CHECK_THAT(error({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}), Contains("SLURM_JOB_NODELIST is missing"));
  CHECK_THAT(error({{"RANK", "0"}, {"WORLD_SIZE", "0"}}), Contains("WORLD_SIZE=0 must be >= 1"));
  CHECK_THAT(error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}),
             Contains("is not a port"));
}
