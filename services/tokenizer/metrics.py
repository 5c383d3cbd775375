"""Tokenizer service metrics (`sluice_tokenizer_*`). Label values come from fixed sets only."""
from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS, TOKEN_BUCKETS

REQUESTS = Counter("sluice_tokenizer_requests_total", "Finished RPCs by method and status code",
                   ["method", "code"])  # method: Generate|Tokenize|Detokenize|GetModelInfo; code: gRPC name
LATENCY = Histogram("sluice_tokenizer_request_latency_seconds", "Generate: arrival to last message",
                    buckets=LATENCY_BUCKETS)
TTFT = Histogram("sluice_tokenizer_time_to_first_token_seconds",
                 "Generate: arrival to the first message carrying tokens", buckets=LATENCY_BUCKETS)
INPUT_TOKENS = Histogram("sluice_tokenizer_input_tokens_per_request", "Prompt tokens per Generate request",
                         buckets=TOKEN_BUCKETS)
OUTPUT_TOKENS = Histogram("sluice_tokenizer_output_tokens_per_request", "Generated tokens per Generate request",
                          buckets=TOKEN_BUCKETS)
INPUT_TOKENS_TOTAL = Counter("sluice_tokenizer_input_tokens_total", "Prompt tokens, all requests")
OUTPUT_TOKENS_TOTAL = Counter("sluice_tokenizer_output_tokens_total", "Generated tokens, all requests")
IN_FLIGHT = Gauge("sluice_tokenizer_streams_in_flight", "Generate streams open now")
