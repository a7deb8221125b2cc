// Benthos v4 with only the components the benchmark's peer pipelines use: kafka_franz in,
// sql_insert (lib/pq) and aws_s3 with parquet_encode out. Built once into the cache by
// bench/peers/build.py; the pipelines are the YAML files beside this one.
package main

import (
	"context"

	"github.com/benthosdev/benthos/v4/public/service"

	_ "github.com/benthosdev/benthos/v4/public/components/aws"
	_ "github.com/benthosdev/benthos/v4/public/components/io"
	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	_ "github.com/benthosdev/benthos/v4/public/components/pure/extended"
	_ "github.com/benthosdev/benthos/v4/public/components/sql/base"
	_ "github.com/lib/pq"
)

func main() {
	service.RunCLI(context.Background())
}
