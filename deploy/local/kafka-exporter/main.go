// Command kafka-exporter exposes a Kafka-protocol broker's consumer-group
// lag to Prometheus under the metric names and labels of
// github.com/danielqsj/kafka_exporter (v1.x), the exporter deploy/k8s runs in
// a cluster, so the dashboard's queries read the same series beside the
// local stack. That module is not served by the Go module proxy this
// project builds from, so the stack builds this one instead: the subset of
// kafka_exporter's metrics the dashboard and docs use, read the way
// kafka_exporter reads them (sarama, ListGroups, DescribeGroups,
// OffsetFetch, ListOffsets), on every scrape.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "kafka"

var (
	brokersDesc = prometheus.NewDesc(namespace+"_brokers",
		"Number of Brokers in the Kafka Cluster.", nil, nil)
	topicPartitionsDesc = prometheus.NewDesc(namespace+"_topic_partitions",
		"Number of partitions for this Topic", []string{"topic"}, nil)
	currentOffsetDesc = prometheus.NewDesc(namespace+"_topic_partition_current_offset",
		"Current Offset of a Broker at Topic/Partition", []string{"topic", "partition"}, nil)
	groupOffsetDesc = prometheus.NewDesc(namespace+"_consumergroup_current_offset",
		"Current Offset of a ConsumerGroup at Topic/Partition", []string{"consumergroup", "topic", "partition"}, nil)
	groupOffsetSumDesc = prometheus.NewDesc(namespace+"_consumergroup_current_offset_sum",
		"Current Offset of a ConsumerGroup at Topic for all partitions", []string{"consumergroup", "topic"}, nil)
	groupLagDesc = prometheus.NewDesc(namespace+"_consumergroup_lag",
		"Current Approximate Lag of a ConsumerGroup at Topic/Partition", []string{"consumergroup", "topic", "partition"}, nil)
	groupLagSumDesc = prometheus.NewDesc(namespace+"_consumergroup_lag_sum",
		"Current Approximate Lag of a ConsumerGroup at Topic for all partitions", []string{"consumergroup", "topic"}, nil)
	groupMembersDesc = prometheus.NewDesc(namespace+"_consumergroup_members",
		"Amount of members in a consumer group", []string{"consumergroup"}, nil)
	scrapeErrorsDesc = prometheus.NewDesc("kafka_exporter_scrape_errors",
		"Requests of the last scrape that the broker refused or could not answer, by request.", []string{"request"}, nil)
)

// exporter reads the broker on every scrape, through one long-lived client.
type exporter struct {
	client sarama.Client
	admin  sarama.ClusterAdmin
}

func (e *exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{brokersDesc, topicPartitionsDesc, currentOffsetDesc,
		groupOffsetDesc, groupOffsetSumDesc, groupLagDesc, groupLagSumDesc, groupMembersDesc, scrapeErrorsDesc} {
		ch <- d
	}
}

type partitionKey struct {
	topic     string
	partition int32
}

func (e *exporter) Collect(ch chan<- prometheus.Metric) {
	failed := map[string]float64{"Metadata": 0, "ListOffsets": 0, "ListGroups": 0, "DescribeGroups": 0, "OffsetFetch": 0}
	defer func() {
		for request, n := range failed {
			ch <- prometheus.MustNewConstMetric(scrapeErrorsDesc, prometheus.GaugeValue, n, request)
		}
	}()
	if err := e.client.RefreshMetadata(); err != nil {
		failed["Metadata"]++
		log.Printf("metadata: %v", err)
	}
	ch <- prometheus.MustNewConstMetric(brokersDesc, prometheus.GaugeValue, float64(len(e.client.Brokers())))

	topics, err := e.client.Topics()
	if err != nil {
		failed["Metadata"]++
		log.Printf("topics: %v", err)
	}
	newest := map[partitionKey]int64{}
	for _, topic := range topics {
		partitions, err := e.client.Partitions(topic)
		if err != nil {
			failed["Metadata"]++
			log.Printf("partitions of %s: %v", topic, err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(topicPartitionsDesc, prometheus.GaugeValue, float64(len(partitions)), topic)
		for _, p := range partitions {
			offset, err := e.client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				failed["ListOffsets"]++
				log.Printf("newest offset of %s/%d: %v", topic, p, err)
				continue
			}
			newest[partitionKey{topic, p}] = offset
			ch <- prometheus.MustNewConstMetric(currentOffsetDesc, prometheus.GaugeValue, float64(offset),
				topic, strconv.Itoa(int(p)))
		}
	}

	groups, err := e.admin.ListConsumerGroups()
	if err != nil {
		failed["ListGroups"]++
		log.Printf("list groups: %v", err)
		return
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	members := map[string]int{}
	if len(names) > 0 {
		described, err := e.admin.DescribeConsumerGroups(names)
		if err != nil {
			failed["DescribeGroups"]++
			log.Printf("describe groups: %v", err)
		}
		for _, d := range described {
			members[d.GroupId] = len(d.Members)
		}
	}
	for _, group := range names {
		ch <- prometheus.MustNewConstMetric(groupMembersDesc, prometheus.GaugeValue, float64(members[group]), group)
		// All partitions of every topic, as kafka_exporter's default
		// --offset.show-all: a group that never committed on a partition
		// answers -1 there and is left out.
		wanted := map[string][]int32{}
		for k := range newest {
			wanted[k.topic] = append(wanted[k.topic], k.partition)
		}
		offsets, err := e.admin.ListConsumerGroupOffsets(group, wanted)
		if err != nil {
			failed["OffsetFetch"]++
			log.Printf("offsets of group %s: %v", group, err)
			continue
		}
		for topic, blocks := range offsets.Blocks {
			var offsetSum, lagSum int64
			seen := false
			for p, block := range blocks {
				if block.Err != sarama.ErrNoError || block.Offset < 0 {
					continue
				}
				seen = true
				part := strconv.Itoa(int(p))
				ch <- prometheus.MustNewConstMetric(groupOffsetDesc, prometheus.GaugeValue, float64(block.Offset), group, topic, part)
				offsetSum += block.Offset
				if high, ok := newest[partitionKey{topic, p}]; ok {
					lag := high - block.Offset
					if lag < 0 {
						lag = 0
					}
					ch <- prometheus.MustNewConstMetric(groupLagDesc, prometheus.GaugeValue, float64(lag), group, topic, part)
					lagSum += lag
				}
			}
			if seen {
				ch <- prometheus.MustNewConstMetric(groupOffsetSumDesc, prometheus.GaugeValue, float64(offsetSum), group, topic)
				ch <- prometheus.MustNewConstMetric(groupLagSumDesc, prometheus.GaugeValue, float64(lagSum), group, topic)
			}
		}
	}
}

func main() {
	servers := flag.String("kafka.server", "kafka:9092", "Address (host:port) of a Kafka server; comma-separated for several.")
	listen := flag.String("web.listen-address", ":9308", "Address to listen on for the web interface and telemetry.")
	path := flag.String("web.telemetry-path", "/metrics", "Path under which to expose metrics.")
	version := flag.String("kafka.version", "2.0.0", "Kafka protocol version the client speaks (kafka_exporter's default).")
	flag.Parse()

	config := sarama.NewConfig()
	config.ClientID = "kafka-exporter"
	v, err := sarama.ParseKafkaVersion(*version)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kafka-exporter: bad --kafka.version %q: %v; allowed: a Kafka release such as 2.0.0\n", *version, err)
		os.Exit(2)
	}
	config.Version = v
	config.Net.DialTimeout = 5 * time.Second
	config.Net.ReadTimeout = 10 * time.Second
	config.Metadata.Full = true
	addrs := strings.Split(*servers, ",")
	client, err := sarama.NewClient(addrs, config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kafka-exporter: cannot connect to %s: %v\n", *servers, err)
		os.Exit(1)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kafka-exporter: cannot make an admin client of %s: %v\n", *servers, err)
		os.Exit(1)
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(&exporter{client: client, admin: admin})

	mux := http.NewServeMux()
	mux.Handle(*path, promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	server := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdown)
	}()
	log.Printf("kafka-exporter: %s on %s, brokers %s", *path, *listen, *servers)
	if err := server.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "kafka-exporter: %v\n", err)
		os.Exit(1)
	}
	_ = admin.Close()
}
