import com.google.protobuf.Any;
import com.google.protobuf.Duration;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.RetryInfo;
import dev.tollway.v1.CompleteRequest;
import dev.tollway.v1.CompleteResponse;
import dev.tollway.v1.CompletionGrpc;
import dev.tollway.v1.Cost;
import dev.tollway.v1.Message;
import dev.tollway.v1.Part;
import dev.tollway.v1.Role;
import dev.tollway.v1.StreamCompleteRequest;
import dev.tollway.v1.StreamCompleteResponse;
import dev.tollway.v1.Usage;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.MetadataUtils;
import java.util.Iterator;
import java.util.Locale;
import java.util.concurrent.TimeUnit;

/** A minimal Tollway caller: the same steps as the Go and Node examples. */
public final class TollwayExample {
  // Without a deadline a call waits as long as the gateway's default budget (five minutes).
  private static final long CALL_TIMEOUT_SECONDS = 30;
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> REQUEST_ID =
      Metadata.Key.of("tollway-request-id", Metadata.ASCII_STRING_MARSHALLER);

  public static void main(String[] args) throws InterruptedException {
    String address = getenv("TOLLWAY_ADDRESS", "127.0.0.1:50051");
    String model = getenv("TOLLWAY_MODEL", "mixrouter/gemini-2.0-flash");
    String prompt = args.length > 0 ? args[0] : "Say hi";

    // round_robin spreads calls over every address the name resolves to: with a headless
    // Service, one per ready pod. usePlaintext: as inside a cluster without TLS.
    ManagedChannel channel = ManagedChannelBuilder.forTarget(address)
        .defaultLoadBalancingPolicy("round_robin")
        .usePlaintext()
        .build();
    Metadata headers = new Metadata();
    String key = System.getenv("TOLLWAY_API_KEY");
    if (key != null && !key.isEmpty()) {
      headers.put(AUTHORIZATION, "Bearer " + key);
    }
    CompletionGrpc.CompletionBlockingStub stub = CompletionGrpc.newBlockingStub(channel)
        .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    Message message = Message.newBuilder()
        .setRole(Role.ROLE_USER)
        .addParts(Part.newBuilder().setText(prompt))
        .build();

    boolean completed = complete(stub, CompleteRequest.newBuilder().setModel(model).addMessages(message).build());
    boolean streamed = stream(stub, StreamCompleteRequest.newBuilder().setModel(model).addMessages(message).build());
    channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
    System.exit(completed && streamed ? 0 : 1);
  }

  static boolean complete(CompletionGrpc.CompletionBlockingStub stub, CompleteRequest request) {
    try {
      // withDeadlineAfter counts from now: set it on each call, not once on a stub kept for later.
      CompleteResponse response =
          stub.withDeadlineAfter(CALL_TIMEOUT_SECONDS, TimeUnit.SECONDS).complete(request);
      StringBuilder answer = new StringBuilder();
      for (Part part : response.getChoices(0).getMessage().getPartsList()) {
        answer.append(part.getText());
      }
      System.out.println("answer: " + answer);
      printUsage(response.getUsage(), response.getCost());
      return true;
    } catch (StatusRuntimeException e) {
      printError(e);
      return false;
    }
  }

  static boolean stream(CompletionGrpc.CompletionBlockingStub stub, StreamCompleteRequest request) {
    boolean started = false;
    try {
      Iterator<StreamCompleteResponse> messages =
          stub.withDeadlineAfter(CALL_TIMEOUT_SECONDS, TimeUnit.SECONDS).streamComplete(request);
      while (messages.hasNext()) {
        StreamCompleteResponse message = messages.next();
        if (message.hasDelta()) {
          System.out.print((started ? "" : "stream: ") + message.getDelta().getText());
          System.out.flush();
          started = true;
        } else if (message.hasSummary()) {
          if (started) {
            System.out.println();
          }
          printUsage(message.getSummary().getUsage(), message.getSummary().getCost());
        }
      }
      return true;
    } catch (StatusRuntimeException e) {
      if (started) {
        System.out.println();
      }
      printError(e);
      return false;
    }
  }

  static void printUsage(Usage usage, Cost cost) {
    System.out.printf("usage: input=%d output=%d total=%d%n",
        usage.getInput().getTotal(), usage.getOutput().getTotal(), usage.getTotalTokens());
    if (cost.getUnpriced()) {
      System.out.println("cost: unpriced (" + cost.getUnpricedReason() + ")");
    } else {
      System.out.println("cost: " + cost.getTotalNanoUsd() + " nano-USD (" + cost.getPriceEntry() + ")");
    }
  }

  // What a caller acts on: the code, the message, the request id to quote in a report, and
  // for RESOURCE_EXHAUSTED how long to wait before trying again.
  static void printError(StatusRuntimeException e) {
    Status status = e.getStatus();
    System.out.println("error: " + status.getCode() + ": " + status.getDescription());
    Metadata trailers = Status.trailersFromThrowable(e);
    String requestId = trailers == null ? null : trailers.get(REQUEST_ID);
    System.out.println("request id: " + (requestId == null ? "none" : requestId));
    com.google.rpc.Status details = StatusProto.fromThrowable(e);
    if (details == null) {
      return;
    }
    for (Any detail : details.getDetailsList()) {
      if (detail.is(RetryInfo.class)) {
        try {
          Duration delay = detail.unpack(RetryInfo.class).getRetryDelay();
          System.out.printf(Locale.ROOT, "retry after: %.3fs%n", delay.getSeconds() + delay.getNanos() / 1e9);
        } catch (InvalidProtocolBufferException unreadable) {
          System.out.println("retry after: unreadable RetryInfo");
        }
      }
    }
  }

  static String getenv(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }
}
