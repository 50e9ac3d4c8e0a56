// A minimal Tollway caller in Go: a deadline on every call, the caller's key as bearer
// metadata, one Complete, one StreamComplete, and on failure the status, the request id and
// the RetryInfo detail.
//
//	TOLLWAY_ADDRESS=dns:///tollway.llm.svc.cluster.local:50051 TOLLWAY_API_KEY=... go run . "Say hi"
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tollwayv1 "tollway.dev/gen/go/tollway/v1"
)

// Without a deadline a call waits as long as the gateway's default budget (five minutes).
const callTimeout = 30 * time.Second

func main() {
	address := getenv("TOLLWAY_ADDRESS", "127.0.0.1:50051")
	model := getenv("TOLLWAY_MODEL", "mixrouter/gemini-2.0-flash")
	prompt := "Say hi"
	if len(os.Args) > 1 {
		prompt = os.Args[1]
	}

	// round_robin spreads calls over every address the name resolves to: with a headless
	// Service, one per ready pod. WithInsecure: plaintext, as inside a cluster without TLS.
	conn, err := grpc.Dial(address, grpc.WithInsecure(),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}]}`))
	if err != nil {
		log.Fatalf("cannot dial %s: %v", address, err)
	}
	defer conn.Close()
	client := tollwayv1.NewCompletionClient(conn)
	messages := []*tollwayv1.Message{{
		Role:  tollwayv1.Role_ROLE_USER,
		Parts: []*tollwayv1.Part{{Content: &tollwayv1.Part_Text{Text: prompt}}},
	}}

	completed := complete(client, &tollwayv1.CompleteRequest{Model: model, Messages: messages})
	streamed := stream(client, &tollwayv1.StreamCompleteRequest{Model: model, Messages: messages})
	if !completed || !streamed {
		os.Exit(1)
	}
}

// callContext carries the deadline and the caller's key (none: the gateway is anonymous).
func callContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	if key := os.Getenv("TOLLWAY_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	return ctx, cancel
}

func complete(client tollwayv1.CompletionClient, request *tollwayv1.CompleteRequest) bool {
	ctx, cancel := callContext()
	defer cancel()
	var trailer metadata.MD
	response, err := client.Complete(ctx, request, grpc.Trailer(&trailer))
	if err != nil {
		printError(err, trailer)
		return false
	}
	var answer strings.Builder
	for _, part := range response.GetChoices()[0].GetMessage().GetParts() {
		answer.WriteString(part.GetText())
	}
	fmt.Printf("answer: %s\n", answer.String())
	printUsage(response.GetUsage(), response.GetCost())
	return true
}

func stream(client tollwayv1.CompletionClient, request *tollwayv1.StreamCompleteRequest) bool {
	ctx, cancel := callContext()
	defer cancel()
	call, err := client.StreamComplete(ctx, request)
	if err != nil {
		printError(err, nil)
		return false
	}
	started := false
	for {
		message, err := call.Recv()
		if err == io.EOF {
			return true
		}
		if err != nil {
			if started {
				fmt.Println()
			}
			printError(err, call.Trailer())
			return false
		}
		switch event := message.GetEvent().(type) {
		case *tollwayv1.StreamCompleteResponse_Delta:
			if !started {
				fmt.Print("stream: ")
				started = true
			}
			fmt.Print(event.Delta.GetText())
		case *tollwayv1.StreamCompleteResponse_Summary:
			if started {
				fmt.Println()
			}
			printUsage(event.Summary.GetUsage(), event.Summary.GetCost())
		}
	}
}

func printUsage(usage *tollwayv1.Usage, cost *tollwayv1.Cost) {
	fmt.Printf("usage: input=%d output=%d total=%d\n",
		usage.GetInput().GetTotal(), usage.GetOutput().GetTotal(), usage.GetTotalTokens())
	if cost.GetUnpriced() {
		fmt.Printf("cost: unpriced (%s)\n", cost.GetUnpricedReason())
	} else {
		fmt.Printf("cost: %d nano-USD (%s)\n", cost.GetTotalNanoUsd(), cost.GetPriceEntry())
	}
}

// printError shows what a caller acts on: the code, the message, the request id to quote in a
// report, and for RESOURCE_EXHAUSTED how long to wait before trying again.
func printError(err error, trailer metadata.MD) {
	st := status.Convert(err)
	fmt.Printf("error: %s: %s\n", st.Code(), st.Message())
	requestID := "none"
	if ids := trailer.Get("tollway-request-id"); len(ids) > 0 {
		requestID = ids[0]
	}
	fmt.Printf("request id: %s\n", requestID)
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok {
			delay := info.GetRetryDelay()
			wait := time.Duration(delay.GetSeconds())*time.Second + time.Duration(delay.GetNanos())
			fmt.Printf("retry after: %.3fs\n", wait.Seconds())
		}
	}
}

func getenv(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
