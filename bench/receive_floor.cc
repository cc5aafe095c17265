// The compiled receive floor: what a gRPC client in C++ (the grpc++ library Debian ships)
// pays to take the GetFlows stream, doing nothing with it. It calls
// /observer.Observer/GetFlows with the request bytes read from stdin, the ingester's
// channel options, and messages kept as grpc::ByteBuffer (no protobuf parse), counts
// `expected` messages and prints one JSON line. Built and run by bench/receive_floor.py.
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/rpc_method.h>
#include <grpcpp/impl/codegen/sync_stream.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

static double Seconds(const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

// The process's own peak RSS in MiB: VmHWM starts afresh at exec, where getrusage's
// ru_maxrss keeps the parent's (a Python bench of 300 MB).
static double PeakRssMb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return 0.0;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: receive_floor ADDRESS EXPECTED < request.bin\n";
    return 2;
  }
  const std::string target = argv[1];
  const long expected = std::atol(argv[2]);
  const std::string request((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  grpc::ChannelArguments args;  // as ingest.sources.hubble.CHANNEL_OPTIONS
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  // A server-streaming call with ByteBuffer messages, as generated code makes it: the
  // messages stay the bytes that came.
  grpc::internal::RpcMethod method("/observer.Observer/GetFlows", grpc::internal::RpcMethod::SERVER_STREAMING,
                                   channel);
  // Connected before the clock starts, as bench/limit.py waits for its channel.
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    std::cerr << "receive_floor: could not connect to " << target << " in 10 s\n";
    return 1;
  }
  grpc::ClientContext context;
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  rusage before{};
  getrusage(RUSAGE_SELF, &before);
  const auto started = std::chrono::steady_clock::now();
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel.get(), method, &context, request_buffer));
  grpc::ByteBuffer message;
  long messages = 0, bytes = 0;
  while (messages < expected && reader->Read(&message)) {
    messages++;
    bytes += static_cast<long>(message.Length());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  rusage after{};
  getrusage(RUSAGE_SELF, &after);
  if (messages < expected) {  // the stream ended first: say how
    const grpc::Status status = reader->Finish();
    std::cerr << "receive_floor: the stream ended after " << messages << " of " << expected << " messages (status "
              << status.error_code() << ": " << status.error_message() << ")\n";
    return 1;
  }
  context.TryCancel();
  const double user = Seconds(after.ru_utime) - Seconds(before.ru_utime);
  const double system = Seconds(after.ru_stime) - Seconds(before.ru_stime);
  std::printf("{\"messages\": %ld, \"bytes\": %ld, \"seconds\": %.4f, \"messages_per_s\": %.1f, "
              "\"user_s\": %.3f, \"system_s\": %.3f, \"cpu_s\": %.3f, \"max_rss_mb\": %.1f}\n",
              messages, bytes, seconds, seconds > 0 ? messages / seconds : 0.0, user, system, user + system,
              PeakRssMb());
  std::fflush(stdout);
  // The reader is not finished (the call was cancelled): leave without tearing grpc down.
  std::_Exit(0);
}
