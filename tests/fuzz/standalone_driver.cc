// Runs a libFuzzer target without libFuzzer (g++ has none): every file given on the command
// line as a seed, then a fixed number of deterministic mutations of the seeds (bit flips,
// byte insertions, truncations, splices of valid frames). Used by scripts/test as a fuzz
// smoke test under ASan/UBSan; build with clang's -fsanitize=fuzzer for real fuzzing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  long iterations = 20000;
  std::vector<std::string> seeds;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("-runs=", 0) == 0) {
      iterations = std::atol(arg.c_str() + 6);
      continue;
    }
    std::ifstream in(arg, std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (seeds.empty()) seeds.emplace_back("");
  std::mt19937_64 rng(0x1a2b3c4d);
  for (const auto& s : seeds) LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  for (long i = 0; i < iterations; ++i) {
    std::string input = seeds[rng() % seeds.size()];
    int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 5) {
        case 0:
          if (!input.empty()) input[rng() % input.size()] ^= static_cast<char>(1u << (rng() % 8));
          break;
        case 1:
          input.insert(input.begin() + static_cast<long>(input.empty() ? 0 : rng() % input.size()),
                       static_cast<char>(rng()));
          break;
        case 2:
          if (!input.empty()) input.resize(rng() % input.size());
          break;
        case 3:
          input += seeds[rng() % seeds.size()];
          break;
        default:
          if (!input.empty()) input[rng() % input.size()] = static_cast<char>(rng() % 2 ? 0xff : 0);
      }
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
  }
  std::printf("fuzz smoke: %zu seeds, %ld mutated inputs, no crash\n", seeds.size(), iterations);
  return 0;
}
