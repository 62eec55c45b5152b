// Package tools holds tests of the deployment files (alert rules, dashboard, Helm chart) that need heavy dependencies kept out of the product's go.mod.
package tools
